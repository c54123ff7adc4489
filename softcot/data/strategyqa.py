"""StrategyQA: rationale = facts, gold "yes"/"no"; train/test split by position, as the paper's loader.

The files (JSON arrays) are concatenated in registry order; the first int((1 - test_fraction) * n)
questions are train, the rest test.
"""

from __future__ import annotations

from pathlib import Path

from softcot.data.rows import Loaded, example, field, read_json
from softcot.errors import DataError

DATASET = "strategyqa"


def load(files: dict[str, Path], split: str, settings: dict) -> Loaded:
    rows = []
    for source_file, path in files.items():
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of questions, got {type(data).__name__}")
        rows += [(source_file, path, index, row) for index, row in enumerate(data)]
    n_train = int((1 - settings["strategyqa"]["test_fraction"]) * len(rows))
    chosen = rows[:n_train] if split == "train" else rows[n_train:]

    records = []
    for position, (source_file, path, index, row) in enumerate(chosen):
        where = f"{path}: record {index}"
        facts = field(row, "facts", list, where)
        for i, fact in enumerate(facts):
            if not isinstance(fact, str):
                raise DataError(f"{where}: field 'facts'[{i}]: expected str, got {type(fact).__name__}")
        records.append(
            example(
                DATASET,
                split,
                position,
                question=field(row, "question", str, where),
                options=None,
                rationale=facts,
                answer="yes" if field(row, "answer", bool, where) else "no",
                meta={
                    "source_file": source_file,
                    "index": index,
                    "original_id": field(row, "qid", str, where),
                },
            )
        )
    return Loaded(records)
