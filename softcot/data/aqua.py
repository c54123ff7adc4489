"""AQuA-RAT: question text, options {"A": text, ...} without "A)" prefixes, gold letter, rationale lines.

AQuA's .json files hold one JSON object per line.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from softcot.data.rows import Loaded, example, field, text_lines
from softcot.errors import DataError
from softcot.io import read_jsonl

DATASET = "aqua"
_OPTION = re.compile(r"\s*([A-F])\)(.*)", re.DOTALL)


def parse_options(options: list, where: str) -> dict[str, str]:
    """["A)5", "B) 6", ...] -> {"A": "5", "B": "6", ...}; letters must run A, B, C, ... in order."""
    parsed = {}
    for i, option in enumerate(options):
        expected = chr(ord("A") + i)
        match = _OPTION.fullmatch(option) if isinstance(option, str) else None
        if match is None or match.group(1) != expected or not match.group(2).strip():
            raise DataError(f"{where}: field 'options'[{i}]: expected '{expected})<text>', got {option!r}")
        parsed[expected] = match.group(2).strip()
    return parsed


def load(files: dict[str, Path], split: str, settings: dict) -> Loaded:
    ((source_file, path),) = files.items()
    records = []
    for index, (lineno, row) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        options = field(row, "options", list, where)
        if not 2 <= len(options) <= 6:
            raise DataError(f"{where}: field 'options': expected 2 to 6 options, got {len(options)}")
        options = parse_options(options, where)
        gold = field(row, "correct", str, where).strip()
        if gold not in options:
            raise DataError(f"{where}: field 'correct': {gold!r} is not one of the options {sorted(options)}")
        records.append(
            example(
                DATASET,
                split,
                index,
                question=field(row, "question", str, where),
                options=options,
                rationale=text_lines(field(row, "rationale", str, where)),
                answer=gold,
                meta={"source_file": source_file, "line": lineno},
            )
        )
    subset = settings["aqua_train_subset"] if split == "train" else {"size": None}
    if subset["size"] is not None and subset["size"] < len(records):
        # A seeded sample of the rows, in file order; ids keep the row's index in the full file.
        keep = sorted(random.Random(subset["seed"]).sample(range(len(records)), subset["size"]))
        records = [records[i] for i in keep]
    return Loaded(records)
