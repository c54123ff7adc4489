"""The dataset catalog (datasets.yaml): the only place that names a dataset and states its facts.

Dataset names, answer types, prompt families, option formats and which dataset's trained
artefacts serve another are all read from here; nothing else lists datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from softcot.errors import DataError

CATALOG_PATH = Path(__file__).with_name("datasets.yaml")
VARIANTS = ("offline", "paper")
ANSWER_TYPES = ("number", "letter", "yes_no")


@dataclass(frozen=True)
class SplitSource:
    """The raw files one split is built from, and why they differ from the paper's (None: they do not)."""

    files: tuple[str, ...]
    substitute: str | None = None
    examples: int | None = None  # the split's size with the default settings (sizes jobs only)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: str  # module name inside softcot.data
    answer: str  # number | letter | yes_no
    settings: tuple[str, ...]  # keys of params.yaml's `data` section that change the prepared files
    splits: dict[str, dict[str, SplitSource]]  # split -> variant -> source
    prompt_family: str
    letters: str = ""  # option letters of a `letter` dataset
    option_format: str | None = None  # data.<key>.option_format writes its options
    trained_on: str = ""  # the dataset whose trained artefacts serve it ("" = itself)
    joint_build: bool = False  # one build writes both splits

    @property
    def trains(self) -> bool:
        """Whether the dataset has a training split, so artefacts are trained on it."""
        return "train" in self.splits

    @property
    def artefact_dataset(self) -> str:
        """The dataset whose trained artefacts (projector, adapter) evaluate this one."""
        return self.trained_on or self.name

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


def _check_entry(path: Path, name: str, entry: dict) -> None:
    required = {"loader", "answer", "prompt_family", "settings", "splits"}
    allowed = required | {"letters", "option_format", "trained_on", "joint_build"}
    if missing := required - set(entry):
        raise DataError(f"{path}: {name}: lacks {', '.join(sorted(missing))}")
    if unknown := set(entry) - allowed:
        raise DataError(f"{path}: {name}: unknown keys {', '.join(sorted(unknown))}")
    if entry["answer"] not in ANSWER_TYPES:
        raise DataError(f"{path}: {name}.answer: {entry['answer']!r} is not one of {', '.join(ANSWER_TYPES)}")
    if (entry["answer"] == "letter") != bool(entry.get("letters")):
        raise DataError(f"{path}: {name}: `letters` is required for letter answers and only for them")


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, DatasetSpec]:
    catalog = {}
    for name, entry in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        _check_entry(path, name, entry)
        splits = {}
        for split, by_variant in entry["splits"].items():
            if "offline" not in by_variant or set(by_variant) - set(VARIANTS):
                raise DataError(f"{path}: {name}.splits.{split}: needs `offline` and at most `paper`")
            splits[split] = {
                variant: SplitSource(tuple(src["files"]), src.get("substitute"), src.get("examples"))
                for variant, src in by_variant.items()
            }
        if any("paper" in by_variant for by_variant in entry["splits"].values()) and (
            "variant" not in entry["settings"]
        ):
            raise DataError(f"{path}: {name}: has `paper` files, so its settings must include `variant`")
        catalog[name] = DatasetSpec(
            name,
            entry["loader"],
            entry["answer"],
            tuple(entry["settings"]),
            splits,
            prompt_family=entry["prompt_family"],
            letters=entry.get("letters", ""),
            option_format=entry.get("option_format"),
            trained_on=entry.get("trained_on", ""),
            joint_build=bool(entry.get("joint_build", False)),
        )
    for spec in catalog.values():
        if spec.trained_on and not (spec.trained_on in catalog and catalog[spec.trained_on].trains):
            raise DataError(
                f"{path}: {spec.name}.trained_on: {spec.trained_on!r} is not a dataset with a train split"
            )
    return catalog


@cache
def catalog() -> dict[str, DatasetSpec]:
    """The shipped catalog, read once per process."""
    return load_catalog()


def dataset_names() -> tuple[str, ...]:
    """Every dataset, in catalog order."""
    return tuple(catalog())


def dataset_spec(name: str) -> DatasetSpec:
    catalog_ = catalog()
    if name not in catalog_:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(catalog_)})")
    return catalog_[name]


def result_settings(data: dict, dataset: str) -> dict:
    """Snakemake's `params:` value for a dataset: only what changes its prepared files."""
    return dataset_spec(dataset).result_settings(data)
