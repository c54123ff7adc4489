"""Reading prediction files for a table: verified against the test set, re-read under both extractors.

A prediction file keeps each example's raw output, so a table never has to trust the stored
`prediction` and `correct`: it recomputes them with the settings the evaluation recorded (its
metrics file) and refuses a file whose stored fields disagree, naming file, line and field. Every
record and metrics file must also prove it belongs to the cell it is read for (its pair, dataset,
method and seed, and the fingerprint of the settings the plan resolves for it), so a file copied
from another cell, seed or preset is refused rather than silently changing a cell. It then
reads every output under both answer extractors (docs/protocol.md §9, §10, §16): `reference`
(the paper's extractor and vote, what its numbers mean) and `robust` (this project's extractor and
a vote that never elects "no answer"), so every cell of a table exists under both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softcot.answers import extract_answer, is_correct
from softcot.errors import DataError
from softcot.io import json_sha256, read_jsonl, sha256_file
from softcot.voting import vote

# Extractor mode -> (answer extractor, vote over samples).
MODES = {"reference": ("reference", "reference"), "robust": ("robust", "fixed")}
RECORD_KEYS = ("id", "dataset", "pair", "method", "seed", "output", "prediction", "gold", "correct")
METRICS_KEYS = (
    "pair",
    "dataset",
    "method",
    "seed",
    "n",
    "correct",
    "accuracy",
    "extractor",
    "vote",
    "settings",
    "artefact_sha256",
)
IDENTITY = ("pair", "dataset", "method", "seed")


def prediction_path(root: str | Path, pair: str, dataset: str, method: str, seed: int) -> Path:
    return Path(root) / pair / dataset / method / f"seed{seed}.jsonl"


def metrics_path(root: str | Path, pair: str, dataset: str, method: str, seed: int) -> Path:
    return Path(root) / pair / dataset / method / f"seed{seed}.metrics.json"


def prepared_test_path(root: str | Path, dataset: str) -> Path:
    return Path(root) / dataset / "test.jsonl"


@dataclass(frozen=True)
class TestSet:
    """A prepared test split: gold answers by id, and the ids in file order."""

    path: Path
    gold: dict[str, str]
    order: list[str]

    @classmethod
    def read(cls, path: Path) -> TestSet:
        gold, order = {}, []
        for _, record in read_jsonl(path):
            gold[str(record["id"])] = record["answer"]
            order.append(str(record["id"]))
        return cls(path, gold, order)

    def expected_ids(self, limit: int | None) -> set[str]:
        """The examples an evaluation with this limit covers (the first `limit`, or all)."""
        return set(self.order if limit is None else self.order[:limit])


@dataclass(frozen=True)
class Provenance:
    """What one seed's files must have been written for: the cell and seed they are read for, the
    fingerprint (softcot.io.json_sha256) of the settings the plan resolves for that cell, and the
    sha256 of the trained artefact it reads now (None: the method has none)."""

    pair: str
    dataset: str
    method: str
    seed: int
    settings_sha256: str
    artefact: Path | None = None
    artefact_sha256: str | None = None

    def mismatch(self, found: dict[str, Any]) -> tuple[str, Any, Any] | None:
        """(field, expected, found) of the first identity field that differs, else None."""
        for field in IDENTITY:
            if found[field] != getattr(self, field):
                return field, getattr(self, field), found[field]
        return None


@dataclass
class Cell:
    """One (row, dataset): per-seed correctness of every example under each extractor mode, aligned
    by sorted example id."""

    files: list[Path]
    ids: list[str]
    correct: dict[str, np.ndarray]  # mode -> [seeds, examples] bool
    settings: tuple[str, str]  # the (extractor, vote) the evaluation recorded

    def accuracies(self, mode: str) -> np.ndarray:
        """Per-seed accuracy in %."""
        return self.correct[mode].mean(axis=1) * 100


def read_recorded_settings(path: Path, n_records: int, expected: Provenance) -> dict[str, Any]:
    """A metrics file, after checking it was written for the expected cell and seed, with the
    expected settings, and describes as many examples as its prediction file holds."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable metrics file ({exc})") from exc
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: not a readable metrics file (not a JSON object)")
    for key in METRICS_KEYS:
        if key not in metrics:
            raise DataError(
                f"{path}: lacks key {key!r} (written by hand or by an older version): delete it and "
                "rerun snakemake, which evaluates the cell again"
            )
    wrong = expected.mismatch(metrics)
    if wrong:
        field, want, found = wrong
        raise DataError(f"{path}: key {field!r} is {found!r}, but the file is read for {field} {want!r}")
    settings = metrics["settings"]
    if not isinstance(settings, dict) or json_sha256(settings) != expected.settings_sha256:
        raise DataError(
            f"{path}: key 'settings' has fingerprint {json_sha256(settings)}, but the plan resolves "
            f"{expected.settings_sha256} for {expected.method} of pair {expected.pair} on {expected.dataset} "
            "(the file was written with other settings: another preset or a changed parameter)"
        )
    if metrics["artefact_sha256"] != expected.artefact_sha256:
        raise DataError(
            f"{path}: key 'artefact_sha256' is {metrics['artefact_sha256']!r}, but {expected.artefact} "
            f"has sha256 {expected.artefact_sha256!r}: the evaluation read another checkpoint (it was "
            "retrained or replaced since); rerun the evaluation"
        )
    for key in ("extractor", "vote"):
        if metrics[key] != settings.get(key):
            raise DataError(
                f"{path}: key {key!r} is {metrics[key]!r}, but its settings say {settings.get(key)!r}"
            )
    if metrics["n"] != n_records:
        raise DataError(f"{path}: key 'n' is {metrics['n']} but its prediction file has {n_records} records")
    return metrics


def check_figures(path: Path, metrics: dict[str, Any], correct: int) -> None:
    """The metrics file's `correct` and `accuracy` must be its verified prediction file's."""
    if metrics["correct"] != correct:
        raise DataError(
            f"{path}: key 'correct' is {metrics['correct']!r}, but its prediction file has {correct} "
            "correct records"
        )
    accuracy = correct / metrics["n"]
    if not isinstance(metrics["accuracy"], int | float) or not math.isclose(metrics["accuracy"], accuracy):
        raise DataError(
            f"{path}: key 'accuracy' is {metrics['accuracy']!r}, but its prediction file has "
            f"{correct}/{metrics['n']} = {accuracy!r}"
        )


def _read_answer(dataset: str, outputs: list[str], extractor: str, vote_mode: str) -> str | None:
    answers = [extract_answer(dataset, output, extractor) for output in outputs]
    return answers[0] if len(answers) == 1 else vote(answers, vote_mode)


def _outputs(record: dict[str, Any], where: str) -> list[str]:
    outputs = record.get("outputs", [record["output"]])
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
        raise DataError(f"{where}: field 'outputs' must be a non-empty list of strings")
    return outputs


def read_seed_file(
    path: Path, metrics_file: Path, test: TestSet, expected: Provenance
) -> tuple[dict[str, dict[str, bool]], tuple[str, str]]:
    """{mode: {example id: correct}} of one seed's file, each record verified, and its settings."""
    records = list(read_jsonl(path))
    if not records:
        raise DataError(f"{path}: no prediction records")
    metrics = read_recorded_settings(metrics_file, len(records), expected)
    dataset, extractor, vote_mode = expected.dataset, metrics["extractor"], metrics["vote"]
    by_mode: dict[str, dict[str, bool]] = {mode: {} for mode in MODES}
    for lineno, record in records:
        where = f"{path}:{lineno}"
        for key in RECORD_KEYS:
            if key not in record:
                raise DataError(f"{where}: record lacks key {key!r}")
        wrong = expected.mismatch(record)
        if wrong:
            field, want, found = wrong
            raise DataError(
                f"{where}: field {field!r} is {found!r}, but the file is read for {field} {want!r}"
            )
        example_id = str(record["id"])
        if example_id not in test.gold:
            raise DataError(f"{where}: example {example_id!r} is not in {test.path}")
        if example_id in by_mode["robust"]:
            raise DataError(f"{where}: duplicate example id {example_id!r}")
        gold = test.gold[example_id]
        if record["gold"] != gold:
            raise DataError(f"{where}: field 'gold' is {record['gold']!r}, but {test.path} says {gold!r}")
        outputs = _outputs(record, where)
        prediction = _read_answer(dataset, outputs, extractor, vote_mode)
        if record["prediction"] != prediction:
            raise DataError(
                f"{where}: field 'prediction' is {record['prediction']!r}, but the output reads "
                f"{prediction!r} (extractor {extractor}, vote {vote_mode})"
            )
        if record["correct"] != is_correct(dataset, prediction, gold, extractor):
            raise DataError(
                f"{where}: field 'correct' is {record['correct']!r}, which does not match the answer"
            )
        for mode, (mode_extractor, mode_vote) in MODES.items():
            answer = _read_answer(dataset, outputs, mode_extractor, mode_vote)
            by_mode[mode][example_id] = is_correct(dataset, answer, gold, mode_extractor)
    check_figures(metrics_file, metrics, sum(bool(record["correct"]) for _, record in records))
    return by_mode, (extractor, vote_mode)


def id_difference(left: set[str], right: set[str]) -> str:
    def sample(ids: set[str]) -> str:
        return ", ".join(sorted(ids)[:3]) + (", ..." if len(ids) > 3 else "")

    only_left, only_right = left - right, right - left
    return (
        f"{len(only_left)} ids only in the first ({sample(only_left)}), "
        f"{len(only_right)} only in the second ({sample(only_right)})"
    )


def checkpoint_sha256(path: Path) -> str:
    """The sha256 of the trained artefact a cell's evaluation read (a missing file is named)."""
    if not path.is_file():
        raise DataError(f"{path}: the trained artefact this table's evaluations read is missing")
    return sha256_file(path)


def load_cell(row: dict[str, Any], dataset: str, predictions: Path, test: TestSet) -> Cell:
    """Every seed file of a row on a dataset; each must have been written for this cell and seed
    with the settings the row's `settings_sha256` names, and cover exactly the examples its limit
    covers."""
    expected = test.expected_ids(row["limit"])
    artefact = Path(row["artefacts"][dataset]) if dataset in row["artefacts"] else None
    artefact_sha256 = checkpoint_sha256(artefact) if artefact is not None else None
    files: list[Path] = []
    per_seed: list[dict[str, dict[str, bool]]] = []
    settings = set()
    for seed in row["seeds"]:
        where = (predictions, row["pair"], dataset, row["method"], seed)
        path = prediction_path(*where)
        provenance = Provenance(
            row["pair"],
            dataset,
            row["method"],
            seed,
            row["settings_sha256"][dataset],
            artefact,
            artefact_sha256,
        )
        by_mode, recorded = read_seed_file(path, metrics_path(*where), test, provenance)
        if set(by_mode["robust"]) != expected:
            raise DataError(
                f"{path}: does not hold the test examples of {test.path} that limit {row['limit']} covers: "
                f"{id_difference(set(by_mode['robust']), expected)}"
            )
        files.append(path)
        per_seed.append(by_mode)
        settings.add(recorded)
    if len(settings) > 1:
        raise DataError(
            f"seeds of {files[0].parent} used different settings (extractor, vote): {sorted(settings)}"
        )
    ids = sorted(expected)
    correct = {
        mode: np.array([[seed_correct[mode][i] for i in ids] for seed_correct in per_seed], dtype=bool)
        for mode in MODES
    }
    return Cell(files=files, ids=ids, correct=correct, settings=settings.pop())
