"""The dataset catalog (datasets.yaml): loader, answer kind, raw files and settings of each dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from softcot.errors import DataError

CATALOG_PATH = Path(__file__).with_name("datasets.yaml")
VARIANTS = ("offline", "paper")


@dataclass(frozen=True)
class SplitSource:
    """The raw files one split is built from, and why they differ from the paper's (None: they do not)."""

    files: tuple[str, ...]
    substitute: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: str  # module name inside softcot.data
    answer: str  # number | letter | yes_no
    settings: tuple[str, ...]  # keys of params.yaml's `data` section that change the prepared files
    splits: dict[str, dict[str, SplitSource]]  # split -> variant -> source

    def source(self, split: str, variant: str) -> SplitSource:
        if split not in self.splits:
            raise DataError(
                f"dataset {self.name!r} has no {split!r} split (it has: {', '.join(self.splits)})"
            )
        by_variant = self.splits[split]
        return by_variant.get(variant, by_variant["offline"])

    def result_settings(self, data: dict) -> dict:
        """The part of params.yaml's (validated) `data` section that decides this dataset's prepared files."""
        return {key: data[key] for key in self.settings}


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, DatasetSpec]:
    catalog = {}
    for name, entry in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        splits = {}
        for split, by_variant in entry["splits"].items():
            if "offline" not in by_variant or set(by_variant) - set(VARIANTS):
                raise DataError(f"{path}: {name}.splits.{split}: needs `offline` and at most `paper`")
            splits[split] = {
                variant: SplitSource(tuple(src["files"]), src.get("substitute"))
                for variant, src in by_variant.items()
            }
        if any("paper" in by_variant for by_variant in entry["splits"].values()) and (
            "variant" not in entry["settings"]
        ):
            raise DataError(f"{path}: {name}: has `paper` files, so its settings must include `variant`")
        catalog[name] = DatasetSpec(name, entry["loader"], entry["answer"], tuple(entry["settings"]), splits)
    return catalog


def dataset_spec(name: str) -> DatasetSpec:
    catalog = load_catalog()
    if name not in catalog:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(catalog)})")
    return catalog[name]


def result_settings(data: dict, dataset: str) -> dict:
    """Snakemake's `params:` value for a dataset: only what changes its prepared files."""
    return dataset_spec(dataset).result_settings(data)
