"""The method catalog (methods.yaml): what every method kind needs and reads, and every trained
artefact's files, as data.

The planner, the config's validation and the Snakefile read only this module, so building the DAG
imports no torch; `softcot.methods.method_class` imports an implementation when a job computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from softcot.errors import ConfigError

CATALOG_PATH = Path(__file__).with_name("methods.yaml")


@dataclass(frozen=True)
class Artefact:
    """What a method trains per (pair, dataset): its name, its trainer and the files it writes.

    By default the files live in results/{name}s/{pair}/{dataset}/: `{name}.safetensors` (the
    checkpoint) and `{name}.json` (the training record); `extra` holds further (key, file name)
    pairs the training writes beside the checkpoint.
    """

    name: str
    trained_by: str  # the method kind whose module trains it
    train_keys: tuple[str, ...] | None = None  # None: every common train key, no own section
    directory: str = "results/{name}s/{pair}/{dataset}"
    checkpoint: str = "{name}.safetensors"
    record: str = "{name}.json"
    extra: tuple[tuple[str, str], ...] = ()

    def files(self, pair: str, dataset: str) -> dict[str, str]:
        """Every output file by key: `checkpoint`, `record` and the extra keys."""
        directory = self.directory.format(name=self.name, pair=pair, dataset=dataset)
        names = {"checkpoint": self.checkpoint, "record": self.record, **dict(self.extra)}
        return {key: f"{directory}/{name.format(name=self.name)}" for key, name in names.items()}

    def log(self, pair: str, dataset: str) -> str:
        """The training job's log, mirroring the directory (logs/projectors/{pair}/{dataset}.log)."""
        directory = self.directory.format(name=self.name, pair=pair, dataset=dataset)
        return f"logs/{directory.removeprefix('results/')}.log"


@dataclass(frozen=True)
class MethodSpec:
    """A method kind as the planner sees it."""

    kind: str
    implementation: str  # "module:Class" under softcot/methods/
    uses_assistant: bool
    artefact: Artefact | None
    eval_keys: tuple[str, ...]  # every evaluation setting it reads: the generation keys, then its own


@cache
def _catalog() -> tuple[dict[str, MethodSpec], dict[str, Artefact]]:
    raw = yaml.safe_load(CATALOG_PATH.read_text(encoding="utf-8"))
    artefacts = {
        name: Artefact(
            name,
            entry["trained_by"],
            tuple(entry["train_keys"]) if "train_keys" in entry else None,
            **{key: entry[key] for key in ("directory", "checkpoint", "record") if key in entry},
            extra=tuple(entry.get("extra", {}).items()),
        )
        for name, entry in raw["artefacts"].items()
    }
    generation = tuple(raw["generation_keys"])
    methods = {}
    for kind, entry in raw["methods"].items():
        if entry.get("artefact") is not None and entry["artefact"] not in artefacts:
            raise ConfigError(f"{CATALOG_PATH}: method {kind!r} names unknown artefact {entry['artefact']!r}")
        methods[kind] = MethodSpec(
            kind,
            entry["implementation"],
            bool(entry.get("uses_assistant", False)),
            artefacts.get(entry.get("artefact")),
            generation + tuple(entry.get("eval_keys", ())),
        )
    for artefact in artefacts.values():
        if artefact.trained_by not in methods:
            raise ConfigError(f"{CATALOG_PATH}: artefact {artefact.name!r} names unknown trainer")
    return methods, artefacts


def method_kinds() -> tuple[str, ...]:
    return tuple(sorted(_catalog()[0]))


def method_spec(kind: str) -> MethodSpec:
    methods = _catalog()[0]
    if kind not in methods:
        raise ConfigError(f"unknown method kind {kind!r} (known: {', '.join(sorted(methods))})")
    return methods[kind]


def artefacts() -> dict[str, Artefact]:
    """Every trained artefact by name."""
    return dict(_catalog()[1])


def artefact(name: str) -> Artefact:
    found = _catalog()[1]
    if name not in found:
        raise ConfigError(f"unknown trained artefact {name!r} (known: {', '.join(found)})")
    return found[name]
