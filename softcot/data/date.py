"""BIG-Bench-Hard Date Understanding (evaluation only): question, options A-F, gold letter.

Each input reads "<question>\\nOptions:\\n(A) ...\\n(B) ..."; each target is "(B)".
"""

from __future__ import annotations

import re
from pathlib import Path

from softcot.data.rows import Loaded, example, field, read_json
from softcot.errors import DataError

DATASET = "date"
_OPTION = re.compile(r"\(([A-F])\)\s*(.*\S)")
_TARGET = re.compile(r"\(([A-F])\)")


def parse_input(text: str, where: str) -> tuple[str, dict[str, str]]:
    """Split an input into its question and its options; DataError if the options are malformed."""
    question, marker, option_block = text.partition("Options:")
    if not marker or not question.strip():
        raise DataError(f"{where}: field 'input': expected '<question>\\nOptions:\\n(A) ...', got {text!r}")
    options = {}
    for i, line in enumerate(line for line in option_block.split("\n") if line.strip()):
        expected = chr(ord("A") + i)
        match = _OPTION.fullmatch(line.strip())
        if match is None or match.group(1) != expected:
            raise DataError(
                f"{where}: field 'input': option {i} should read '({expected}) <text>', got {line!r}"
            )
        options[expected] = match.group(2)
    if len(options) < 2:
        raise DataError(f"{where}: field 'input': expected at least 2 options, got {len(options)}")
    return question.strip(), options


def load(files: dict[str, Path], split: str, settings: dict) -> Loaded:
    ((source_file, path),) = files.items()
    examples = field(read_json(path), "examples", list, str(path))
    records = []
    for index, row in enumerate(examples):
        where = f"{path}: examples[{index}]"
        question, options = parse_input(field(row, "input", str, where), where)
        target = _TARGET.fullmatch(field(row, "target", str, where).strip())
        if target is None or target.group(1) not in options:
            raise DataError(
                f"{where}: field 'target': expected one of the option letters as '(A)', got {row['target']!r}"
            )
        records.append(
            example(
                DATASET,
                split,
                index,
                question=question,
                options=options,
                rationale=[],
                answer=target.group(1),
                meta={"source_file": source_file, "index": index},
            )
        )
    return Loaded(records)
