"""GSM8K: rationale = the solution lines before "#### X"; gold = X without commas, sign kept."""

from __future__ import annotations

from pathlib import Path

from softcot.data.rows import Loaded, example, field, text_lines
from softcot.errors import DataError
from softcot.io import read_jsonl
from softcot.numbers import normalize_number

DATASET = "gsm8k"


def load(files: dict[str, Path], split: str, settings: dict) -> Loaded:
    ((source_file, path),) = files.items()
    records = []
    for index, (lineno, row) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        question = field(row, "question", str, where)
        *steps, final = text_lines(field(row, "answer", str, where)) or [""]
        if not final.startswith("####"):
            raise DataError(f"{where}: field 'answer': the last line must be '#### <number>', got {final!r}")
        try:
            gold = normalize_number(final.removeprefix("####"))
        except ValueError as exc:
            raise DataError(f"{where}: field 'answer': {exc} after '####'") from exc
        records.append(
            example(
                DATASET,
                split,
                index,
                question=question,
                options=None,
                rationale=steps,
                answer=gold,
                meta={"source_file": source_file, "line": lineno},
            )
        )
    return Loaded(records)
