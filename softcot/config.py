"""params.yaml: validation and preset resolution.

Only the resolver (softcot.plan) reads the configuration, through `Config`, so a value means the
same thing everywhere and a typo is caught once, before any job runs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from softcot.data.datasets import catalog, dataset_names, dataset_spec
from softcot.errors import ConfigError
from softcot.methods.catalog import artefacts, method_kinds, method_spec
from softcot.models.registry import model_names
from softcot.prompts.sets import prompt_set_names

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"


def read_params(path: str | Path) -> dict[str, Any]:
    """params.yaml as a mapping; a syntax error names its line and column (Snakemake's own loader
    says only that the file is not valid YAML, so the Snakefile reads it here first)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML ({problem})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return raw


def deep_merge(base: dict, override: dict) -> dict:
    """Return base with override merged in, recursively for nested dicts; override wins."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(raw: dict, schema_path: Path = SCHEMA_PATH) -> None:
    """Check params against the schema and the cross-references a schema cannot express."""
    schema = yaml.safe_load(schema_path.read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(raw), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = [f"  {_key_path(e)}: {e.message}" for e in errors]
        raise ConfigError("params.yaml is invalid:\n" + "\n".join(lines))

    problems = _cross_references(raw)
    if problems:
        raise ConfigError("params.yaml is invalid:\n" + "\n".join(f"  {p}" for p in problems))


def _format_problem(key: str, value: str) -> str | None:
    """An option format may name only {letter} and {text}, and must name both."""
    fields = set(re.findall(r"\{(\w*)\}", value))
    if fields != {"letter", "text"}:
        return (
            f"{key}: {value!r} must use exactly the fields {{letter}} and {{text}} (found {sorted(fields)})"
        )
    return None


def _prompt_set_choices(raw: dict) -> list[tuple[str, str]]:
    """(key path, value) of every prompt_set the file sets."""
    found = [(f"{key}.prompt_set", raw[key]["prompt_set"]) for key in ("train", "eval")]
    for name, preset in raw["presets"].items():
        for key in ("train", "eval"):
            if "prompt_set" in preset.get(key, {}):
                found.append((f"presets.{name}.{key}.prompt_set", preset[key]["prompt_set"]))
    found += [
        (f"methods.{name}.prompt_set", method["prompt_set"])
        for name, method in raw["methods"].items()
        if "prompt_set" in method
    ]
    return found


def _cross_references(raw: dict) -> list[str]:
    """What a schema cannot express: names that must exist elsewhere, and per-method limits."""
    problems = []
    datasets, prompt_sets, kinds = dataset_names(), prompt_set_names(), method_kinds()
    if raw["preset"] not in raw["presets"]:
        problems.append(f"preset: unknown preset {raw['preset']!r} (defined: {', '.join(raw['presets'])})")
    for name, preset in raw["presets"].items():
        for role, pair in preset["roles"].items():
            if pair not in preset["pairs"]:
                problems.append(f"presets.{name}.roles.{role}: pair {pair!r} is not in presets.{name}.pairs")
    for key, value in _prompt_set_choices(raw):
        if value not in prompt_sets:
            problems.append(f"{key}: unknown prompt set {value!r} (available: {', '.join(prompt_sets)})")
    for name in raw["models"]["local_paths"]:
        if name not in model_names():
            problems.append(f"models.local_paths.{name}: not a registered model ({', '.join(model_names())})")
    for where, data in [("data", raw["data"])] + [
        (f"presets.{name}.data", preset.get("data", {})) for name, preset in raw["presets"].items()
    ]:
        for key, value in data.items():
            if isinstance(value, dict) and "option_format" in value:
                problem = _format_problem(f"{where}.{key}.option_format", value["option_format"])
                if problem:
                    problems.append(problem)
    for name, preset in raw["presets"].items():
        for method in preset.get("methods", {}):
            if method not in raw["methods"]:
                problems.append(f"presets.{name}.methods.{method}: not a method (defined in `methods`)")
    problems += _trained_on_problems(raw, kinds)
    for name, method in raw["methods"].items():
        if "seeds" in method:
            problems.append(f"methods.{name}.seeds: seeds are shared by all methods; set eval.seeds")
        if method["kind"] not in kinds:
            problems.append(
                f"methods.{name}.kind: unknown kind {method['kind']!r} (known: {', '.join(kinds)})"
            )
            continue
        for preset_name, preset in raw["presets"].items():
            merged = deep_merge(deep_merge(raw["eval"], preset.get("eval", {})), method)
            merged = deep_merge(merged, preset.get("methods", {}).get(name, {}))
            for key in sorted(set(method_spec(method["kind"]).eval_keys) - set(merged) - {"samples"}):
                problems.append(
                    f"methods.{name}.{key}: method kind {method['kind']!r} reads {key!r}, which neither "
                    f"the method nor `eval` sets (preset {preset_name!r})"
                )
        if "num_thought_tokens" in method_spec(method["kind"]).eval_keys:
            for preset_name, preset in raw["presets"].items():
                merged = deep_merge(deep_merge(raw["eval"], preset.get("eval", {})), method)
                if merged["num_thought_tokens"] < 1:
                    problems.append(
                        f"methods.{name}.num_thought_tokens: method kind {method['kind']!r} needs at least 1 "
                        f"thought token, got {merged['num_thought_tokens']} under preset {preset_name!r}"
                    )
    all_roles = {role for preset in raw["presets"].values() for role in preset["roles"]}
    for name, table in raw["tables"].items():
        for dataset in table["datasets"]:
            if dataset not in datasets:
                problems.append(
                    f"tables.{name}.datasets: unknown dataset {dataset!r} (known: {', '.join(datasets)})"
                )
        for i, row in enumerate(table["rows"]):
            if row["pair"] not in all_roles:
                problems.append(
                    f"tables.{name}.rows[{i}].pair: role {row['pair']!r} is defined by no preset "
                    f"(roles: {', '.join(sorted(all_roles))})"
                )
        keys = [row["key"] for row in table["rows"]]
        if len(set(keys)) != len(keys):
            problems.append(f"tables.{name}.rows: row keys must be unique, got {keys}")
        if table["baseline"] not in keys:
            problems.append(f"tables.{name}.baseline: {table['baseline']!r} is not a row key ({keys})")
        for i, row in enumerate(table["rows"]):
            if row["method"] not in raw["methods"]:
                problems.append(f"tables.{name}.rows[{i}].method: unknown method {row['method']!r}")
    return problems + _baseline_problems(raw) + _probe_problems(raw) + _train_section_problems(raw)


def _baseline_problems(raw: dict) -> list[str]:
    """Each row is tested against the row of its own pair role that evaluates the baseline row's
    method, so each role needs at most one such row. A role with none is tested against the
    baseline row itself only where that is the evaluation its own would be: the baseline method
    reads no assistant, and in every preset the role's pair has the baseline row's base model
    (assistant_size: every size shares the base, so its CoT is one evaluation)."""
    problems = []
    for name, table in raw["tables"].items():
        baseline = next((row for row in table["rows"] if row["key"] == table["baseline"]), None)
        if baseline is None or baseline["method"] not in raw["methods"]:
            continue  # reported above
        method = baseline["method"]
        for role in dict.fromkeys(row["pair"] for row in table["rows"]):
            keys = [row["key"] for row in table["rows"] if row["pair"] == role and row["method"] == method]
            if len(keys) > 1:
                problems.append(
                    f"tables.{name}: role {role!r} has {len(keys)} rows of the baseline method "
                    f"{method!r} ({', '.join(keys)}); its rows must have one to be tested against"
                )
            elif not keys and not _same_evaluation(raw, method, role, baseline["pair"]):
                problems.append(
                    f"tables.{name}: role {role!r} has no row of the baseline method {method!r}, so its "
                    f"rows have nothing of their own pair to be tested against; add one"
                )
    return problems


def _same_evaluation(raw: dict, method: str, role: str, baseline_role: str) -> bool:
    """Whether `method` evaluated for `role` is the same as for `baseline_role` in every preset
    that defines both: the method reads only the base model and the two pairs share it."""
    kind = raw["methods"][method]["kind"]
    if kind not in method_kinds() or method_spec(kind).uses_assistant:
        return False
    for preset in raw["presets"].values():
        pairs = [preset["pairs"].get(preset["roles"].get(r)) for r in (role, baseline_role)]
        if all(pairs) and pairs[0]["base"] != pairs[1]["base"]:
            return False
    return True


def _trained_on_problems(raw: dict, kinds: tuple[str, ...]) -> list[str]:
    """`trained_on` names a dataset with a train split; a method entry setting it must train."""
    entries = [("eval", raw["eval"], None)]
    entries += [
        (f"presets.{name}.eval", preset.get("eval", {}), None) for name, preset in raw["presets"].items()
    ]
    for name, method in raw["methods"].items():
        entries.append((f"methods.{name}", method, method["kind"]))
        entries += [
            (f"presets.{preset_name}.methods.{name}", preset.get("methods", {}).get(name, {}), method["kind"])
            for preset_name, preset in raw["presets"].items()
        ]
    problems = []
    for key, entry, kind in entries:
        if "trained_on" not in entry:
            continue
        dataset = entry["trained_on"]
        if dataset not in catalog() or not catalog()[dataset].trains:
            problems.append(f"{key}.trained_on: {dataset!r} is not a dataset with a train split")
        elif kind in kinds and method_spec(kind).artefact is None:
            problems.append(f"{key}.trained_on: method kind {kind!r} trains nothing")
    return problems


def _train_section_problems(raw: dict) -> list[str]:
    """An artefact's own train section (`train.lora`, ...) may hold only keys its training reads."""
    sections = [("train", raw["train"])] + [
        (f"presets.{name}.train", preset.get("train", {})) for name, preset in raw["presets"].items()
    ]
    problems = []
    for where, train in sections:
        for name, artefact in artefacts().items():
            if name not in train:
                continue
            if artefact.train_keys is None:
                problems.append(f"{where}.{name}: artefact {name!r} has no section of its own")
                continue
            for key in sorted(set(train[name]) - set(artefact.train_keys)):
                problems.append(f"{where}.{name}.{key}: the {name} training does not read {key!r}")
    return problems


def _probe_problems(raw: dict) -> list[str]:
    """The thought probe's names: per preset (its overrides merged), a pair role the preset
    defines and datasets with a training split (the probe trains its own projector); its centred
    projectors are named by probe.centred, never by probe.train."""
    probe = raw["probe"]
    problems = [
        f"probe.presets.{name}: not a preset (defined: {', '.join(raw['presets'])})"
        for name in probe.get("presets", {})
        if name not in raw["presets"]
    ]
    for name, preset in raw["presets"].items():
        merged = deep_merge(probe, probe.get("presets", {}).get(name, {}))
        if "projection_center" in merged["train"]:
            problems.append(
                f"probe.train.projection_center: the probe's first projector is the paper's (none); "
                f"list centred projectors in probe.centred instead (preset {name!r})"
            )
        if merged["pair"] not in preset["roles"]:
            problems.append(
                f"probe.pair: role {merged['pair']!r} is not defined by preset {name!r} "
                f"(roles: {', '.join(sorted(preset['roles']))})"
            )
        for dataset in merged["datasets"]:
            if dataset not in dataset_names():
                problems.append(f"probe.datasets: unknown dataset {dataset!r} under preset {name!r}")
            elif not dataset_spec(dataset).trains:
                problems.append(
                    f"probe.datasets: {dataset!r} has no training split to train the probe's projector "
                    f"on (preset {name!r})"
                )
    return problems


# --- a step's settings, written by hand or passed by Snakemake --------------------------------------
def _schema_defs() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))["$defs"]


def check_data_settings(dataset: str, settings: dict) -> None:
    """The settings must hold exactly the dataset's result-affecting keys, valid per params.schema.yaml."""
    expected = set(dataset_spec(dataset).settings)
    if not isinstance(settings, dict) or set(settings) != expected:
        got = sorted(settings) if isinstance(settings, dict) else type(settings).__name__
        raise ConfigError(
            f"--settings for {dataset}: expected the keys {sorted(expected)} of data, got {got}"
        )
    defs = _schema_defs()
    for key, value in settings.items():
        key_schema = {"$defs": defs, **defs["data_fields"]["properties"][key]}
        for error in jsonschema.Draft202012Validator(key_schema).iter_errors(value):
            path = "".join(f".{p}" for p in error.absolute_path)
            raise ConfigError(f"--settings for {dataset}: data.{key}{path}: {error.message}")


def check_train_settings(settings: Any, origin: str) -> dict[str, Any]:
    """Check a train step's settings: the method, the pair, the option format, and every train key
    its artefact's training reads (by params.schema.yaml; nothing falls back silently)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{origin}: the train settings must be a JSON object")
    for key in ("kind", "pair", "option_format"):
        if key not in settings:
            raise ConfigError(f"{origin}: the train settings lack {key!r}")
    method = method_spec(settings["kind"])
    if method.artefact is None:
        raise ConfigError(f"{origin}: method kind {method.kind!r} trains nothing")
    roles = {"base", "assistant"} if method.uses_assistant else {"base"}
    if not isinstance(settings["pair"], dict) or set(settings["pair"]) != roles:
        raise ConfigError(f"{origin}: 'pair' must name the models {sorted(roles)}, got {settings['pair']!r}")
    defs = _schema_defs()
    known = {**defs["train_settings"]["properties"], **defs["train_options"]["properties"]}
    keys = method.artefact.train_keys or list(defs["train_settings"]["properties"])
    section = {
        "type": "object",
        "$defs": defs,
        "additionalProperties": False,
        "required": sorted(keys),
        "properties": {**{key: known[key] for key in keys}, "kind": {}, "pair": {}, "option_format": {}},
    }
    errors = list(jsonschema.Draft202012Validator(section).iter_errors(settings))
    if errors:
        lines = [
            f"  train.{'.'.join(map(str, e.absolute_path)) or '<top level>'}: {e.message}" for e in errors
        ]
        raise ConfigError(f"{origin}: invalid train settings:\n" + "\n".join(lines))
    return settings


@dataclass(frozen=True)
class Cell:
    """One evaluation job's identity: a method of a pair on a dataset (all seeds)."""

    pair: str
    dataset: str
    method: str


class Config:
    """A validated params.yaml with the active preset merged in."""

    def __init__(self, raw: dict[str, Any]):
        validate(raw)
        self.raw = raw
        self.preset_name: str = raw["preset"]
        self.preset: dict = raw["presets"][self.preset_name]

    @classmethod
    def load(cls, path: str | Path = "params.yaml", overrides: dict | None = None) -> Config:
        return cls(deep_merge(read_params(path), overrides or {}))

    # --- models -----------------------------------------------------------------------
    @property
    def pairs(self) -> dict[str, dict[str, str]]:
        return self.preset["pairs"]

    def pair(self, name: str) -> dict[str, str]:
        if name not in self.pairs:
            raise ConfigError(f"pair {name!r} is not defined in presets.{self.preset_name}.pairs")
        return self.pairs[name]

    def models(self) -> list[str]:
        """Every model name the active preset uses, in a stable order."""
        return sorted({m for pair in self.pairs.values() for m in (pair["assistant"], pair["base"])})

    # --- settings ---------------------------------------------------------------------
    def train_settings(self, artefact: str | None = None) -> dict[str, Any]:
        """The train section with the preset's merged in. A section named after a trained artefact
        (`train.lora`, `train.coconut`) belongs to that artefact alone: it is left out, except for
        `artefact`, whose section is merged over the common keys (it may override them)."""
        merged = deep_merge(self.raw["train"], self.preset.get("train", {}))
        sections = {name: merged.pop(name) for name in artefacts() if name in merged}
        return deep_merge(merged, sections.get(artefact, {})) if artefact else merged

    @property
    def seeds(self) -> list[int]:
        """Evaluation seeds; one evaluation job writes one prediction file per seed."""
        return deep_merge(self.raw["eval"], self.preset.get("eval", {}))["seeds"]

    def data_settings(self) -> dict[str, Any]:
        """The data section with the active preset's `data` merged in (the paper preset: variant paper)."""
        return deep_merge(self.raw["data"], self.preset.get("data", {}))

    def preset_eval(self) -> dict[str, Any]:
        """The eval section with the active preset's values merged in (no method's)."""
        return deep_merge(self.raw["eval"], self.preset.get("eval", {}))

    def eval_settings(self, method: str) -> dict[str, Any]:
        """Protocol defaults, then the preset's, then the method's own keys (`kind` included), then
        the preset's keys for that method (`presets.<preset>.methods.<method>`)."""
        if method not in self.raw["methods"]:
            raise ConfigError(f"unknown method {method!r} (defined: {', '.join(self.raw['methods'])})")
        settings = deep_merge(self.raw["eval"], self.preset.get("eval", {}))
        settings = deep_merge(settings, self.raw["methods"][method])
        settings = deep_merge(settings, self.preset.get("methods", {}).get(method, {}))
        settings.setdefault("samples", 1)
        return settings

    # --- tables -----------------------------------------------------------------------
    def table_names(self) -> list[str]:
        return list(self.raw["tables"])

    def table(self, name: str) -> dict[str, Any]:
        """The layout with each row's role resolved to its pair (`pair`), the role kept as `role`:
        rows are tested within their role. Rows whose role the preset lacks are dropped."""
        if name not in self.raw["tables"]:
            raise ConfigError(f"unknown table {name!r} (defined: {', '.join(self.raw['tables'])})")
        table = copy.deepcopy(self.raw["tables"][name])
        roles = self.preset["roles"]
        table["rows"] = [
            dict(row, pair=roles[row["pair"]], role=row["pair"])
            for row in table["rows"]
            if row["pair"] in roles
        ]
        table["dropped_rows"] = [
            row["label"] for row in self.raw["tables"][name]["rows"] if row["pair"] not in roles
        ]
        if table["baseline"] not in {row["key"] for row in table["rows"]}:
            raise ConfigError(
                f"tables.{name}.baseline: row {table['baseline']!r} uses a role that preset "
                f"{self.preset_name!r} does not define"
            )
        return table

    def table_cells(self, name: str) -> list[Cell]:
        table = self.table(name)
        return [Cell(row["pair"], ds, row["method"]) for row in table["rows"] for ds in table["datasets"]]

    def all_cells(self) -> list[Cell]:
        return sorted(
            {cell for name in self.table_names() for cell in self.table_cells(name)},
            key=lambda c: (c.pair, c.dataset, c.method),
        )
