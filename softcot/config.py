"""params.yaml: validation, preset resolution, and the questions every step asks of it.

Snakemake, the CLI and the table builder all read the configuration through `Config`, so a
value means the same thing everywhere and a typo is caught once, before any job runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from softcot.errors import ConfigError

DATASETS = ("gsm8k", "asdiv-aug", "aqua", "strategyqa", "date")
# Date Understanding has no training set; the paper evaluates it with the GSM8K projector (issue #10).
PROJECTOR_DATASET = {"date": "gsm8k"}
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"


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

    problems = []
    if raw["preset"] not in raw["presets"]:
        problems.append(f"preset: unknown preset {raw['preset']!r} (defined: {', '.join(raw['presets'])})")
    for name, preset in raw["presets"].items():
        for role, pair in preset["roles"].items():
            if pair not in preset["pairs"]:
                problems.append(f"presets.{name}.roles.{role}: pair {pair!r} is not in presets.{name}.pairs")
    for name, method in raw["methods"].items():
        if "seeds" in method:
            problems.append(f"methods.{name}.seeds: seeds are shared by all methods; set eval.seeds")
    for name, table in raw["tables"].items():
        keys = [row["key"] for row in table["rows"]]
        if len(set(keys)) != len(keys):
            problems.append(f"tables.{name}.rows: row keys must be unique, got {keys}")
        if table["baseline"] not in keys:
            problems.append(f"tables.{name}.baseline: {table['baseline']!r} is not a row key ({keys})")
        for i, row in enumerate(table["rows"]):
            if row["method"] not in raw["methods"]:
                problems.append(f"tables.{name}.rows[{i}].method: unknown method {row['method']!r}")
    if problems:
        raise ConfigError("params.yaml is invalid:\n" + "\n".join(f"  {p}" for p in problems))


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
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        return cls(deep_merge(raw, overrides or {}))

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
    def train_settings(self) -> dict[str, Any]:
        return deep_merge(self.raw["train"], self.preset.get("train", {}))

    @property
    def seeds(self) -> list[int]:
        """Evaluation seeds; one evaluation job writes one prediction file per seed."""
        return deep_merge(self.raw["eval"], self.preset.get("eval", {}))["seeds"]

    def eval_settings(self, method: str) -> dict[str, Any]:
        """Protocol defaults, then the preset's, then the method's own keys (`kind` included)."""
        if method not in self.raw["methods"]:
            raise ConfigError(f"unknown method {method!r} (defined: {', '.join(self.raw['methods'])})")
        settings = deep_merge(self.raw["eval"], self.preset.get("eval", {}))
        settings = deep_merge(settings, self.raw["methods"][method])
        settings.setdefault("samples", 1)
        return settings

    # --- tables -----------------------------------------------------------------------
    def table_names(self) -> list[str]:
        return list(self.raw["tables"])

    def table(self, name: str) -> dict[str, Any]:
        """The layout with roles resolved to pairs; rows whose role the preset lacks are dropped."""
        if name not in self.raw["tables"]:
            raise ConfigError(f"unknown table {name!r} (defined: {', '.join(self.raw['tables'])})")
        table = copy.deepcopy(self.raw["tables"][name])
        roles = self.preset["roles"]
        table["rows"] = [dict(row, pair=roles[row["pair"]]) for row in table["rows"] if row["pair"] in roles]
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

    @staticmethod
    def projector_dataset(dataset: str) -> str:
        """The dataset whose projector evaluates `dataset`."""
        return PROJECTOR_DATASET.get(dataset, dataset)
