"""One dataset split from pinned raw files into data/prepared/{dataset}/{split}.jsonl, by the
catalog's loader for that dataset; the command line is softcot.commands.prepare."""

from __future__ import annotations

import importlib
from pathlib import Path

from softcot.data.datasets import dataset_spec
from softcot.data.schema import check_examples
from softcot.data.sources import RawFiles
from softcot.io import write_json_atomic, write_jsonl_atomic

SPLITS = ("train", "test")


def prepare(
    dataset: str, split: str, settings: dict, raw_files: RawFiles, out: Path, stats: Path | None = None
) -> int:
    """Build, validate and atomically write one split; return its number of records.

    A loader that reports build statistics (ASDiv-Aug: its unusable-problem counts) writes them to
    `stats`, when given.
    """
    spec = dataset_spec(dataset)
    source = spec.source(split, settings.get("variant", "offline"))
    files = {key: raw_files.path(key) for key in source.files}
    loaded = importlib.import_module(f"softcot.data.{spec.loader}").load(files, split, settings)
    for record in loaded.records:
        record["meta"].update(substitute=source.substitute is not None, substitute_reason=source.substitute)
    check_examples(loaded.records, dataset, split, out)
    if loaded.stats is not None and stats is not None:
        write_json_atomic(stats, loaded.stats)
    return write_jsonl_atomic(out, loaded.records)
