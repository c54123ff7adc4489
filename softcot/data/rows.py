"""Reading raw rows strictly, and the shape every loader returns.

A malformed raw row must stop preparation with a message naming the file, the line or record
and the field, so the checks live here once instead of in every loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softcot.errors import DataError


@dataclass
class Loaded:
    """One split's prepared records, plus build statistics where a loader has any (ASDiv-Aug)."""

    records: list[dict]
    stats: dict | None = None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


def field(row: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """row[name], checked to be of `kind`; DataError naming `where` and the field otherwise."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if name not in row:
        raise DataError(f"{where}: field {name!r} is missing")
    value = row[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field {name!r}: expected {expected}, got {type(value).__name__}")
    return value


def text_lines(text: str) -> list[str]:
    """The non-blank lines of a rationale, as written."""
    return [line for line in text.split("\n") if line.strip()]


def example(
    dataset: str,
    split: str,
    index: int,
    *,
    question: str,
    options: dict[str, str] | None,
    rationale: list[str],
    answer: str,
    meta: dict,
) -> dict:
    """A prepared record whose id, "<dataset>-<split>-<index:05d>", follows the source order."""
    return {
        "id": f"{dataset}-{split}-{index:05d}",
        "dataset": dataset,
        "split": split,
        "question": question.strip(),
        "options": options,
        "rationale": rationale,
        "answer": answer,
        "meta": meta,
    }
