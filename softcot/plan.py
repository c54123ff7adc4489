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

from softcot.config import Config, deep_merge
from softcot.data.datasets import catalog, dataset_spec
from softcot.errors import ConfigError
from softcot.io import canonical_json, json_sha256
from softcot.methods.catalog import MethodSpec, method_spec
from softcot.methods.catalog import artefact as catalog_artefact
from softcot.models.manifest import MANIFEST_NAME
from softcot.models.registry import architecture, get_spec
from softcot.records import rows_per_seed
from softcot.resources import Figures, Model, eval_request, parse_batch_size, train_request
from softcot.shards import shard_bounds

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
        return canonical_json(self.settings)


@dataclass(frozen=True)
class ResolvedMethod:
    """A method's evaluation settings as the config resolves them (protocol defaults, the preset's,
    the method's own keys, the preset's keys for it), with its catalog entry: resolved once per
    plan and passed down as one value."""

    name: str
    spec: MethodSpec
    settings: dict[str, Any]

    @property
    def shards(self) -> int:
        """How many jobs an evaluation is split into (eval.shards)."""
        return int(self.settings.get("shards", 1))


# --- paths ----------------------------------------------------------------------------------------
def prepared(dataset: str, split: str) -> str:
    return f"data/prepared/{dataset}/{split}.jsonl"


def model_dir(model: str) -> str:
    return f"results/models/{model}"


def model_manifest(model: str) -> str:
    """A materialized model's manifest: the file that stands for its folder in the DAG, so a folder
    found incomplete (its manifest deleted) is rebuilt with everything downstream."""
    return f"{model_dir(model)}/{MANIFEST_NAME}"


def imported_artefact(artefact: str, pair: str, dataset: str) -> str:
    """Where an imported artefact (the authors' projector) is converted to."""
    return f"results/imported/{artefact}s/{pair}/{dataset}/{artefact}.safetensors"


def prediction_dir(pair: str, dataset: str, method: str) -> str:
    return f"results/predictions/{pair}/{dataset}/{method}"


def shard_file(pair: str, dataset: str, method: str, shard: int, shards: int) -> str:
    """The generated rows of one shard of an evaluation (1 <= shard <= shards)."""
    return f"{prediction_dir(pair, dataset, method)}/shards/{shard}-of-{shards}.jsonl"


def report(table: str, suffix: str) -> str:
    return f"reports/{table}.{suffix}"


# The thought probe: its reports and what each scores, and the two parts of a train split.
PROBE_REPORTS = {"thought_probe": "test", "thought_probe_validation": "validation"}
PROBE_HELDOUT = ("test", "validation")
PROBE_PARTS = ("fit", "validation")


def probe_data(dataset: str, part: str) -> str:
    return f"results/probe/data/{dataset}/{part}.jsonl"


def probe_dir(pair: str, dataset: str) -> str:
    return f"results/probe/{pair}/{dataset}"


def probe_projector_dir(pair: str, dataset: str, center: str) -> str:
    """One probe projector's directory: the paper's (`none`) or a centred one (probe.centred)."""
    return f"{probe_dir(pair, dataset)}/center-{center}"


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
    return {"kind", "pair", "option_format", *method_spec(kind).eval_keys}


# --- the plan -------------------------------------------------------------------------------------
class Plan:
    """Every step of the active preset, resolved from a validated configuration."""

    def __init__(self, config: Config):
        self.config = config
        self._resolved: dict[str, ResolvedMethod] = {}

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
    def batch_size(self) -> int | str:
        """The preset's evaluation batch size (rows per generation batch), or "auto"."""
        return self.config.preset_eval()["batch_size"]

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
        return None if key is None else self.config.data_settings()[key]["option_format"]

    def method(self, name: str) -> MethodSpec:
        """The catalog entry of a method's kind."""
        return method_spec(self.config.eval_settings(name)["kind"])

    def _pair_models(self, pair: str, uses_assistant: bool) -> dict[str, str]:
        models = self.config.pair(pair)
        return dict(models) if uses_assistant else {"base": models["base"]}

    # --- data -------------------------------------------------------------------------------------
    def data_sources(self) -> dict[str, Any]:
        """Where raw files come from (mirror, download); it cannot change a prepared file."""
        return self.config.data_settings()

    def prepare(self, dataset: str) -> Step:
        spec = dataset_spec(dataset)
        data = self.config.data_settings()
        splits = [split for split in SPLITS if split in spec.splits]
        return Step(
            settings={key: data[key] for key in spec.settings},
            inputs={},
            outputs={split: prepared(dataset, split) for split in splits},
        )

    # --- training ---------------------------------------------------------------------------------
    def train(self, artefact: str, pair: str, dataset: str) -> Step:
        spec = catalog_artefact(artefact)
        trainer = method_spec(spec.trained_by)
        if not dataset_spec(dataset).trains:
            raise ConfigError(
                f"dataset {dataset!r} has no training set; it is evaluated with the "
                f"{dataset_spec(dataset).artefact_dataset} {artefact}"
            )
        models = self._pair_models(pair, trainer.uses_assistant)
        settings = {"kind": trainer.kind, "pair": models, "option_format": self.option_format(dataset)}
        # The common keys with the artefact's own section (train.<artefact>) merged over them; only
        # the keys its training reads, so a change elsewhere reruns nothing of it.
        merged = self.config.train_settings(artefact)
        keys = merged if spec.train_keys is None else spec.train_keys
        settings.update({key: merged[key] for key in keys})
        inputs = {"train": prepared(dataset, "train")}
        inputs.update({role: model_manifest(model) for role, model in models.items()})
        request = train_request(
            self.figures,
            self._sized_models(models),
            examples=self.example_count(dataset, "train", settings["limit"]),
            epochs=int(settings["epochs"]),
            batch_size=int(settings["batch_size"]),
            gpus=self.gpus_per_job,
        )
        return Step(settings, inputs, spec.files(pair, dataset), runtime=request)

    def imported_source(self, artefact: str, pair: str, dataset: str) -> str:
        """The authors' released file for (pair, dataset), from params `imported_projectors`."""
        if artefact != "projector":
            raise ConfigError(f"only projectors can be imported, not {artefact!r}")
        sources = self.config.raw["imported_projectors"]
        if dataset not in sources.get(pair, {}):
            raise ConfigError(
                f"imported_projectors.{pair}.{dataset}: no released projection.bin is named for pair "
                f"{pair!r} on {dataset} (a method with artefact_source: imported needs one)"
            )
        return sources[pair][dataset]

    # --- evaluation -------------------------------------------------------------------------------
    def resolve(self, method: str) -> ResolvedMethod:
        """A method's evaluation settings, resolved from the config once per plan."""
        if method not in self._resolved:
            settings = self.config.eval_settings(method)
            self._resolved[method] = ResolvedMethod(method, method_spec(settings["kind"]), settings)
        return self._resolved[method]

    def _max_new_tokens(self, resolved: ResolvedMethod, pair: str, dataset: str) -> int:
        """`max_new_tokens`, unless `max_new_tokens_by_backbone` names the base's backbone and the
        dataset (protocol §8: Qwen3 generates up to 4096 tokens, 1024 on DU and StrategyQA)."""
        backbone = get_spec(self.config.pair(pair)["base"], self.local_paths).backbone
        by_dataset = resolved.settings.get("max_new_tokens_by_backbone", {}).get(backbone, {})
        return int(by_dataset.get(dataset, resolved.settings["max_new_tokens"]))

    def evaluate(self, pair: str, dataset: str, method: str) -> Step:
        resolved = self.resolve(method)
        spec = resolved.spec
        models = self._pair_models(pair, spec.uses_assistant)
        settings = {
            "kind": spec.kind,
            "pair": models,
            "option_format": self.option_format(dataset),
            **{key: resolved.settings[key] for key in spec.eval_keys},
            "max_new_tokens": self._max_new_tokens(resolved, pair, dataset),
        }
        inputs = {"test": prepared(dataset, "test")}
        inputs.update({role: model_manifest(model) for role, model in models.items()})
        if spec.artefact is not None:
            served_by = self.served_by(dataset, resolved.settings)
            if resolved.settings.get("artefact_source") == "imported":
                self.imported_source(spec.artefact.name, pair, served_by)  # a missing entry fails here
                inputs["artefact"] = imported_artefact(spec.artefact.name, pair, served_by)
            else:
                inputs["artefact"] = spec.artefact.files(pair, served_by)["checkpoint"]
        directory = prediction_dir(pair, dataset, method)
        outputs = {
            "predictions": [f"{directory}/seed{seed}.jsonl" for seed in settings["seeds"]],
            "metrics": [f"{directory}/seed{seed}.metrics.json" for seed in settings["seeds"]],
        }
        examples = self.example_count(dataset, "test", resolved.settings["limit"])
        runtime = {"batch_size": resolved.settings["batch_size"], "shards": resolved.shards}
        runtime.update(self._eval_request(pair, resolved, examples, settings["max_new_tokens"]))
        return Step(settings, inputs, outputs, runtime=runtime)

    @staticmethod
    def served_by(dataset: str, resolved: dict[str, Any]) -> str:
        """The dataset whose trained artefact evaluates `dataset`: the method's `trained_on`, else
        the catalog's (Date Understanding: GSM8K's), else the dataset itself."""
        return resolved.get("trained_on") or dataset_spec(dataset).artefact_dataset

    # --- sharded evaluation (eval.shards > 1): one job per shard of examples, then a merge ----------
    def shards(self, method: str) -> int:
        """How many jobs an evaluation of `method` is split into (eval.shards)."""
        return self.resolve(method).shards

    def sharded_methods(self) -> list[str]:
        return [name for name in self.config.raw["methods"] if self.shards(name) > 1]

    def unsharded_methods(self) -> list[str]:
        return [name for name in self.config.raw["methods"] if self.shards(name) == 1]

    def evaluate_shard(self, pair: str, dataset: str, method: str, shard: int, shards: int) -> Step:
        """Shard `shard` of `shards`: the whole evaluation's settings and inputs, its own rows file,
        and a request sized for its share of the examples."""
        resolved = self.resolve(method)
        if shards != resolved.shards or not 1 <= shard <= shards:
            raise ConfigError(
                f"shard {shard} of {shards}: method {method!r} is split into {resolved.shards} shards"
            )
        cell = self.evaluate(pair, dataset, method)
        lo, hi = shard_bounds(self.example_count(dataset, "test", cell.settings["limit"]), shard, shards)
        runtime = {"batch_size": cell.runtime["batch_size"], "shard": shard, "shards": shards}
        runtime.update(self._eval_request(pair, resolved, hi - lo, cell.settings["max_new_tokens"]))
        outputs = {"rows": shard_file(pair, dataset, method, shard, shards)}
        return Step(cell.settings, cell.inputs, outputs, runtime=runtime)

    def merge(self, pair: str, dataset: str, method: str) -> Step:
        """The per-seed prediction and metrics files of a sharded evaluation, from its shards."""
        cell, shards = self.evaluate(pair, dataset, method), self.shards(method)
        inputs = {
            "shards": [shard_file(pair, dataset, method, i, shards) for i in range(1, shards + 1)],
            "test": cell.inputs["test"],
        }
        if "artefact" in cell.inputs:
            inputs["artefact"] = cell.inputs["artefact"]
        return Step(cell.settings, inputs, cell.outputs)

    # --- sizing (softcot.resources) ---------------------------------------------------------------
    @property
    def figures(self) -> Figures:
        """The active preset's sizing figures (presets.<preset>.resources)."""
        return Figures.from_mapping(self.config.preset["resources"])

    def _sized_models(self, models: dict[str, str]) -> list[Model]:
        """The job's distinct models as sizing sees them, the base first."""
        names = [models["base"]] + [name for name in models.values() if name != models["base"]]
        return [Model(architecture(name), get_spec(name, self.local_paths).dtype) for name in names]

    def example_count(self, dataset: str, split: str, limit: int | None) -> int:
        """How many examples a job reads, from the catalog's split size (for sizing only): capped by
        `limit` and by a `<name>_train_subset.size` among the dataset's data settings."""
        data = self.config.data_settings()
        spec = dataset_spec(dataset)
        count = spec.source(split, data["variant"]).examples or 0
        for key in spec.settings:
            if split == "train" and key.endswith("_train_subset") and data[key].get("size"):
                count = min(count, int(data[key]["size"]))
        return count if limit is None else min(count, int(limit))

    def _eval_request(
        self, pair: str, resolved: ResolvedMethod, examples: int, max_new_tokens: int
    ) -> dict[str, int]:
        spec, settings = resolved.spec, resolved.settings
        per_seed = [key for key in ("samples", "chains") if key in spec.eval_keys]
        return eval_request(
            self.figures,
            self._sized_models(self._pair_models(pair, spec.uses_assistant)),
            rows=examples * len(settings["seeds"]) * rows_per_seed({k: settings[k] for k in per_seed}),
            max_new_tokens=max_new_tokens,
            examples=examples,
            assistant_tokens=int(settings["assist_hard_tokens"])
            if "assist_hard_tokens" in spec.eval_keys
            else 0,
            batch_size=parse_batch_size(settings["batch_size"]),
            gpus=self.gpus_per_job,
        )

    # --- tables -----------------------------------------------------------------------------------
    def table_spec(self, name: str) -> dict[str, Any]:
        """The resolved layout of table `name` with each row's evaluation seeds and the preset name.

        Each row's `settings_sha256` fingerprints, per dataset, the settings its evaluation runs
        with: the table refuses a metrics file that recorded others (another preset, a changed
        parameter), as a file copied from another cell would be. `artefacts` names, per dataset, the
        trained artefact the evaluation reads (none for a method without one): the table refuses a
        metrics file that recorded another checkpoint's hash (the artefact was retrained since)."""
        layout = self.config.table(name)
        rows = []
        for row in layout["rows"]:
            resolved = self.resolve(row["method"])
            settings = resolved.settings
            borrowed = {}
            if resolved.spec.artefact is not None:
                served = {dataset: self.served_by(dataset, settings) for dataset in layout["datasets"]}
                borrowed = {dataset: by for dataset, by in served.items() if by != dataset}
            cells = {
                dataset: self.evaluate(row["pair"], dataset, row["method"]) for dataset in layout["datasets"]
            }
            fingerprints = {dataset: json_sha256(cell.settings) for dataset, cell in cells.items()}
            artefacts = {
                dataset: cell.inputs["artefact"]
                for dataset, cell in cells.items()
                if "artefact" in cell.inputs
            }
            rows.append(
                dict(
                    row,
                    seeds=list(settings["seeds"]),
                    limit=settings["limit"],
                    artefacts_from=borrowed,
                    settings_sha256=fingerprints,
                    artefacts=artefacts,
                )
            )
        return dict(layout, rows=rows, preset=self.preset, primary_extractor=self.primary_extractor)

    @property
    def primary_extractor(self) -> str:
        """The extractor a table shows first: the preset's `eval.extractor` (the paper: reference)."""
        return self.config.preset_eval()["extractor"]

    def table(self, name: str) -> Step:
        spec = self.table_spec(name)
        inputs: dict[str, list[str]] = {"predictions": [], "metrics": []}
        for row in spec["rows"]:
            for dataset in spec["datasets"]:
                outputs = self.evaluate(row["pair"], dataset, row["method"]).outputs
                inputs["predictions"] += outputs["predictions"]
                inputs["metrics"] += outputs["metrics"]
        inputs["tests"] = [prepared(ds, "test") for ds in spec["datasets"]]
        inputs["artefacts"] = sorted({path for row in spec["rows"] for path in row["artefacts"].values()})
        return Step(spec, inputs, {suffix: report(name, suffix) for suffix in REPORT_SUFFIXES})

    def table_names(self) -> list[str]:
        return self.config.table_names()

    def dropped_rows(self) -> dict[str, list[str]]:
        """Table -> labels of the rows the active preset leaves out (it lacks their role)."""
        return {name: self.config.table(name)["dropped_rows"] for name in self.table_names()}

    def targets(self) -> list[str]:
        """Every report of the active preset."""
        return [report(name, suffix) for name in self.table_names() for suffix in REPORT_SUFFIXES]

    # --- the thought probe (softcot.probe) --------------------------------------------------------
    def probe_spec(self) -> dict[str, Any]:
        """params.yaml's `probe` with the active preset's overrides merged, the pair role resolved
        to its pair, N resolved, and `train` merged over the preset's train settings."""
        probe = self.config.raw["probe"]
        spec = deep_merge(
            {k: v for k, v in probe.items() if k != "presets"}, probe.get("presets", {}).get(self.preset, {})
        )
        spec["role"], spec["pair"] = spec["pair"], self.config.preset["roles"][spec["pair"]]
        if spec["num_thought_tokens"] is None:
            evaluation = deep_merge(self.config.raw["eval"], self.config.preset.get("eval", {}))
            spec["num_thought_tokens"] = evaluation["num_thought_tokens"]
        spec["train"] = deep_merge(self.config.train_settings(), spec["train"])
        return spec

    def _probe_dataset(self, dataset: str) -> None:
        if dataset not in self.probe_spec()["datasets"]:
            raise ConfigError(f"dataset {dataset!r} is not among probe.datasets of preset {self.preset!r}")

    def probe_split(self, dataset: str) -> Step:
        """The train split cut in two: `fit` (the probe projector trains on its first examples) and
        `validation` (its last probe.validation examples, for choosing the training settings)."""
        self._probe_dataset(dataset)
        return Step(
            settings={"validation": self.probe_spec()["validation"]},
            inputs={"train": prepared(dataset, "train")},
            outputs={part: probe_data(dataset, part) for part in PROBE_PARTS},
        )

    def probe_train(self, pair: str, dataset: str, center: str = "none") -> Step:
        """One of the probe's own projectors: SoftCoT's training with probe.train, on the fit part
        only, with train.projection_center `center`: the paper's `none` or one of probe.centred."""
        self._probe_dataset(dataset)
        centred = self.probe_spec()["centred"]
        if center != "none" and center not in centred:
            raise ConfigError(
                f"projection centring {center!r} is not among probe.centred {centred} "
                f"of preset {self.preset!r}"
            )
        trainer = method_spec(catalog_artefact("projector").trained_by)
        models = self._pair_models(pair, trainer.uses_assistant)
        settings = {"kind": trainer.kind, "pair": models, "option_format": self.option_format(dataset)}
        settings.update(self.probe_spec()["train"], projection_center=center)
        inputs = {"train": probe_data(dataset, "fit")}
        inputs.update({role: model_manifest(model) for role, model in models.items()})
        directory = probe_projector_dir(pair, dataset, center)
        outputs = {
            "checkpoint": f"{directory}/projector.safetensors",
            "record": f"{directory}/projector.json",
        }
        return Step(settings, inputs, outputs)

    def probe(self, pair: str, dataset: str, heldout: str) -> Step:
        """Scoring every condition on held-out examples: the test split's first probe.examples
        (`test`) or the validation part of the train split (`validation`). It reads the paper's probe
        projector and each centred one of probe.centred."""
        if heldout not in PROBE_HELDOUT:
            raise ConfigError(f"unknown held-out set {heldout!r} (known: {', '.join(PROBE_HELDOUT)})")
        spec = self.probe_spec()
        trained = self.probe_train(pair, dataset)
        settings = {
            "pair": trained.settings["pair"],
            "option_format": trained.settings["option_format"],
            "num_thought_tokens": spec["num_thought_tokens"],
            "examples": spec["examples"] if heldout == "test" else None,
            "seed": spec["seed"],
            "centred": spec["centred"],
            "train": spec["train"],
        }
        examples = prepared(dataset, "test") if heldout == "test" else probe_data(dataset, "validation")
        centred = [self.probe_train(pair, dataset, center).outputs for center in spec["centred"]]
        inputs: dict[str, Any] = {
            "examples": examples,
            "fit": probe_data(dataset, "fit"),
            "projector": trained.outputs["checkpoint"],
            "record": trained.outputs["record"],
            "centred_projectors": [outputs["checkpoint"] for outputs in centred],
            "centred_records": [outputs["record"] for outputs in centred],
        }
        inputs.update({role: model_manifest(model) for role, model in settings["pair"].items()})
        outputs = {"per_example": f"{probe_dir(pair, dataset)}/{heldout}/per_example.jsonl"}
        return Step(settings, inputs, outputs)

    def probe_table(self, name: str) -> Step:
        """reports/thought_probe.* (test split) or reports/thought_probe_validation.* (validation)."""
        if name not in PROBE_REPORTS:
            raise ConfigError(f"unknown probe report {name!r} (known: {', '.join(PROBE_REPORTS)})")
        heldout, spec = PROBE_REPORTS[name], self.probe_spec()
        settings = dict(spec, name=name, heldout=heldout, preset=self.preset)
        settings["models"] = self.config.pair(spec["pair"])
        inputs: dict[str, list[str]] = {
            "per_example": [],
            "records": [],
            "examples": [],
            "fit": [],
            "centred_records": [],
        }
        for dataset in spec["datasets"]:
            step = self.probe(spec["pair"], dataset, heldout)
            inputs["per_example"].append(step.outputs["per_example"])
            inputs["records"].append(step.inputs["record"])
            inputs["centred_records"] += step.inputs["centred_records"]
            inputs["examples"].append(step.inputs["examples"])
            inputs["fit"].append(step.inputs["fit"])
        return Step(settings, inputs, {suffix: report(name, suffix) for suffix in REPORT_SUFFIXES})


# --- what the Snakefile's wildcards may be ---------------------------------------------------------
def datasets_built_per_split() -> list[str]:
    return [name for name, spec in catalog().items() if not spec.joint_build]


def datasets_built_jointly() -> list[str]:
    return [name for name, spec in catalog().items() if spec.joint_build]


def trainable_datasets() -> list[str]:
    return [name for name, spec in catalog().items() if spec.trains]
