"""The resolver: (step, wildcards, params.yaml) -> the step's settings, input paths and output paths.

Snakemake's input functions and `params:` call it, and so do the CLIs when run by hand without
--settings, so a path or a setting is decided in one place. A step's `settings` hold exactly
what can change its outputs: a changed value reruns precisely the jobs that read it. What cannot
change an output (batch sizes, threads) is in `runtime`, which is passed outside `params:`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softcot.config import Config
from softcot.data.datasets import catalog, dataset_spec
from softcot.errors import ConfigError
from softcot.methods import Artefact, Method, artefacts, method_class
from softcot.models.manifest import MANIFEST_NAME

SPLITS = ("train", "test")
REPORT_SUFFIXES = ("md", "csv", "json", "png")


@dataclass(frozen=True)
class Step:
    """One job: what it reads, what it writes, and the settings that decide its outputs."""

    settings: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def settings_json(self) -> str:
        """Canonical JSON: equal settings give equal strings, so Snakemake compares them exactly."""
        return json.dumps(self.settings, sort_keys=True)


# --- paths ----------------------------------------------------------------------------------------
def prepared(dataset: str, split: str) -> str:
    return f"data/prepared/{dataset}/{split}.jsonl"


def model_dir(model: str) -> str:
    return f"results/models/{model}"


def model_manifest(model: str) -> str:
    """A materialized model's manifest: the file that stands for its folder in the DAG, so a folder
    found incomplete (its manifest deleted) is rebuilt with everything downstream."""
    return f"{model_dir(model)}/{MANIFEST_NAME}"


def prediction_dir(pair: str, dataset: str, method: str) -> str:
    return f"results/predictions/{pair}/{dataset}/{method}"


def report(table: str, suffix: str) -> str:
    return f"reports/{table}.{suffix}"


def parse_settings(text: str, source: str = "--settings") -> dict[str, Any]:
    """A step's --settings JSON, with the project's error when it is not a JSON object."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc.msg})") from exc
    if not isinstance(settings, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(settings).__name__}")
    return settings


def check_keys(settings: dict[str, Any], expected: set[str], source: str) -> None:
    """A hand-written settings object fails here with the missing or unknown key named."""
    missing, unknown = expected - set(settings), set(settings) - expected
    if missing or unknown:
        parts = [f"lacks {', '.join(sorted(missing))}" if missing else ""]
        parts.append(f"has unknown keys {', '.join(sorted(unknown))}" if unknown else "")
        raise ConfigError(f"{source}: the settings " + " and ".join(p for p in parts if p))


def eval_setting_keys(kind: str) -> set[str]:
    """The keys of an evaluation step's settings for a method kind."""
    return {"kind", "pair", "option_format", *method_class(kind).eval_keys()}


# --- the plan -------------------------------------------------------------------------------------
class Plan:
    """Every step of the active preset, resolved from a validated configuration."""

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def load(cls, params: str | Path = "params.yaml", overrides: dict | None = None) -> Plan:
        return cls(Config.load(params, overrides))

    @property
    def preset(self) -> str:
        return self.config.preset_name

    @property
    def seeds(self) -> list[int]:
        return self.config.seeds

    @property
    def gpus_per_job(self) -> int:
        return int(self.config.preset["gpus_per_job"])

    @property
    def local_paths(self) -> dict[str, str]:
        """Registered models redirected to pre-downloaded directories (models.local_paths)."""
        return dict(self.config.raw["models"]["local_paths"])

    def local_path_arguments(self, models: list[str]) -> str:
        """`--local-path MODEL=DIR` for those of `models` that are redirected (a CLI argument)."""
        return " ".join(
            f"--local-path {shlex.quote(f'{name}={self.local_paths[name]}')}"
            for name in models
            if name in self.local_paths
        )

    def option_format(self, dataset: str) -> str | None:
        """How the dataset's options are written into questions; None when it has no options."""
        key = dataset_spec(dataset).option_format
        return None if key is None else self.config.raw["data"][key]["option_format"]

    def method(self, name: str) -> type[Method]:
        return method_class(self.config.eval_settings(name)["kind"])

    def _pair_models(self, pair: str, uses_assistant: bool) -> dict[str, str]:
        models = self.config.pair(pair)
        return dict(models) if uses_assistant else {"base": models["base"]}

    # --- data -------------------------------------------------------------------------------------
    def data_sources(self) -> dict[str, Any]:
        """Where raw files come from (mirror, download); it cannot change a prepared file."""
        return self.config.raw["data"]

    def prepare(self, dataset: str) -> Step:
        spec = dataset_spec(dataset)
        data = self.config.raw["data"]
        splits = [split for split in SPLITS if split in spec.splits]
        return Step(
            settings={key: data[key] for key in spec.settings},
            inputs={},
            outputs={split: prepared(dataset, split) for split in splits},
        )

    # --- training ---------------------------------------------------------------------------------
    def artefact(self, name: str) -> tuple[Artefact, type[Method]]:
        found = artefacts()
        if name not in found:
            raise ConfigError(f"unknown trained artefact {name!r} (known: {', '.join(found)})")
        return found[name]

    def train(self, artefact: str, pair: str, dataset: str) -> Step:
        spec, trainer = self.artefact(artefact)
        if not dataset_spec(dataset).trains:
            raise ConfigError(
                f"dataset {dataset!r} has no training set; it is evaluated with the "
                f"{dataset_spec(dataset).artefact_dataset} {artefact}"
            )
        models = self._pair_models(pair, trainer.uses_assistant)
        settings = {"kind": trainer.kind, "pair": models, "option_format": self.option_format(dataset)}
        settings.update(self.config.train_settings())
        inputs = {"train": prepared(dataset, "train")}
        inputs.update({role: model_manifest(model) for role, model in models.items()})
        return Step(settings, inputs, spec.files(pair, dataset))

    # --- evaluation -------------------------------------------------------------------------------
    def evaluate(self, pair: str, dataset: str, method: str) -> Step:
        resolved = self.config.eval_settings(method)
        cls = method_class(resolved["kind"])
        models = self._pair_models(pair, cls.uses_assistant)
        settings = {
            "kind": cls.kind,
            "pair": models,
            "option_format": self.option_format(dataset),
            **{key: resolved[key] for key in cls.eval_keys()},
        }
        inputs = {"test": prepared(dataset, "test")}
        inputs.update({role: model_manifest(model) for role, model in models.items()})
        if cls.artefact is not None:
            served_by = dataset_spec(dataset).artefact_dataset
            inputs["artefact"] = cls.artefact.files(pair, served_by)["checkpoint"]
        directory = prediction_dir(pair, dataset, method)
        outputs = {
            "predictions": [f"{directory}/seed{seed}.jsonl" for seed in settings["seeds"]],
            "metrics": [f"{directory}/seed{seed}.metrics.json" for seed in settings["seeds"]],
        }
        return Step(settings, inputs, outputs, runtime={"batch_size": int(resolved["batch_size"])})

    # --- tables -----------------------------------------------------------------------------------
    def table_spec(self, name: str) -> dict[str, Any]:
        """The resolved layout of table `name` with each row's evaluation seeds and the preset name."""
        layout = self.config.table(name)
        rows = [
            dict(row, seeds=list(self.config.eval_settings(row["method"])["seeds"])) for row in layout["rows"]
        ]
        return dict(layout, rows=rows, preset=self.preset)

    def table(self, name: str) -> Step:
        spec = self.table_spec(name)
        inputs: dict[str, list[str]] = {"predictions": [], "metrics": []}
        for row in spec["rows"]:
            for dataset in spec["datasets"]:
                outputs = self.evaluate(row["pair"], dataset, row["method"]).outputs
                inputs["predictions"] += outputs["predictions"]
                inputs["metrics"] += outputs["metrics"]
        inputs["tests"] = [prepared(ds, "test") for ds in spec["datasets"]]
        return Step(spec, inputs, {suffix: report(name, suffix) for suffix in REPORT_SUFFIXES})

    def table_names(self) -> list[str]:
        return self.config.table_names()

    def dropped_rows(self) -> dict[str, list[str]]:
        """Table -> labels of the rows the active preset leaves out (it lacks their role)."""
        return {name: self.config.table(name)["dropped_rows"] for name in self.table_names()}

    def targets(self) -> list[str]:
        """Every report of the active preset."""
        return [report(name, suffix) for name in self.table_names() for suffix in REPORT_SUFFIXES]


# --- what the Snakefile's wildcards may be ---------------------------------------------------------
def datasets_built_per_split() -> list[str]:
    return [name for name, spec in catalog().items() if not spec.joint_build]


def datasets_built_jointly() -> list[str]:
    return [name for name, spec in catalog().items() if spec.joint_build]


def trainable_datasets() -> list[str]:
    return [name for name, spec in catalog().items() if spec.trains]
