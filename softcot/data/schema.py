"""Validation of prepared examples (docs/design.md section 4), before they are written and when read back.

Training and evaluation trust these files blindly, so every record is checked against
prepared.schema.yaml plus what a JSON Schema cannot say: the answer is in its canonical form,
a letter answer names one of the options, an ASDiv-Aug answer is its formula's value, ids are unique.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import jsonschema
import yaml

from softcot.data.arithmetic import evaluate, to_decimal
from softcot.data.datasets import dataset_spec
from softcot.errors import DataError
from softcot.io import read_jsonl
from softcot.numbers import normalize_number, number_value

SCHEMA_PATH = Path(__file__).with_name("prepared.schema.yaml")


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8")))


def _answer_problem(record: dict, answer_kind: str) -> str | None:
    """What is wrong with the record's answer (or its options) for `answer_kind`; None if nothing."""
    answer, options = record["answer"], record["options"]
    if answer_kind == "letter":
        if options is None:
            return "options: a multiple-choice record needs options"
        letters = sorted(options)
        if letters != [chr(ord("A") + i) for i in range(len(letters))]:
            return f"options: letters must run from A without gaps, got {letters}"
        if answer not in options:
            return f"answer: {answer!r} is not one of the options {letters}"
        return None
    if options is not None:
        return f"options: must be null for a {answer_kind} answer"
    if answer_kind == "yes_no":
        return None if answer in ("yes", "no") else f"answer: expected 'yes' or 'no', got {answer!r}"
    try:
        canonical = normalize_number(answer)
    except ValueError:
        return f"answer: {answer!r} is not a number"
    if canonical != answer:
        return f"answer: {answer!r} is not canonical (expected {canonical!r})"
    formula = record["meta"].get("formula")
    if formula is not None:
        try:
            value = to_decimal(evaluate(formula))
        except ValueError as exc:
            return f"meta.formula: {exc}"
        if value != number_value(answer):
            return f"answer: {answer!r} differs from the value {value} of meta.formula {formula!r}"
    return None


def check_examples(records: Iterable[dict], dataset: str, split: str, where: str | os.PathLike) -> None:
    """Raise DataError naming `where`, the record index, its id and the field at the first bad record."""
    try:
        answer_kind = dataset_spec(dataset).answer
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        label = f"{where}: record {index} (id {record.get('id')!r})"
        error = next(
            iter(sorted(_validator().iter_errors(record), key=lambda e: list(e.absolute_path))), None
        )
        if error is not None:
            field = ".".join(str(p) for p in error.absolute_path) or "<record>"
            raise DataError(f"{label}: {field}: {error.message}")
        if (record["dataset"], record["split"]) != (dataset, split):
            raise DataError(
                f"{label}: dataset/split: expected {dataset}/{split}, "
                f"got {record['dataset']}/{record['split']}"
            )
        problem = _answer_problem(record, answer_kind)
        if problem is not None:
            raise DataError(f"{label}: {problem}")
        if record["id"] in seen:
            raise DataError(f"{label}: id: duplicate of record {seen[record['id']]}")
        seen[record["id"]] = index


def read_prepared(path: str | os.PathLike) -> list[dict]:
    """Load data/prepared/{dataset}/{split}.jsonl and check it as it was checked before writing."""
    path = Path(path)
    records = [record for _, record in read_jsonl(path)]
    if not records:
        raise DataError(f"{path}: no records")
    check_examples(records, records[0].get("dataset"), records[0].get("split"), path)
    return records
