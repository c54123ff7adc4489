"""`softcot prepare`: one dataset split from pinned raw files into data/prepared/{dataset}/{split}.jsonl.

Snakemake passes the dataset's result-affecting settings with --settings (so that changing one
reruns exactly that dataset); by hand, they are read from params.yaml. Where the raw files come
from (mirror or download) is read from params.yaml and $SOFTCOT_DATA_MIRROR: it cannot change the
result, because every file is hash-verified.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import jsonschema
import yaml

from softcot.config import SCHEMA_PATH
from softcot.data.datasets import dataset_names, dataset_spec
from softcot.data.schema import check_examples
from softcot.data.sources import RawFiles
from softcot.errors import ConfigError
from softcot.io import write_json_atomic, write_jsonl_atomic
from softcot.plan import parse_settings

SPLITS = ("train", "test")


def check_settings(dataset: str, settings: dict) -> None:
    """The settings must hold exactly the dataset's result-affecting keys, valid per params.schema.yaml."""
    expected = set(dataset_spec(dataset).settings)
    if not isinstance(settings, dict) or set(settings) != expected:
        got = sorted(settings) if isinstance(settings, dict) else type(settings).__name__
        raise ConfigError(
            f"--settings for {dataset}: expected the keys {sorted(expected)} of data, got {got}"
        )
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    for key, value in settings.items():
        key_schema = {"$defs": schema["$defs"], **schema["$defs"]["data_fields"]["properties"][key]}
        for error in jsonschema.Draft202012Validator(key_schema).iter_errors(value):
            path = "".join(f".{p}" for p in error.absolute_path)
            raise ConfigError(f"--settings for {dataset}: data.{key}{path}: {error.message}")


def prepare(
    dataset: str, split: str, settings: dict, raw_files: RawFiles, out: Path, stats: Path | None = None
) -> int:
    """Build, validate and atomically write one split; return its number of records.

    A loader that reports build statistics (ASDiv-Aug: its unusable-problem counts) writes them to
    `stats`, when given.
    """
    check_settings(dataset, settings)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=dataset_names())
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, type=Path, help="data/prepared/{dataset}/{split}.jsonl")
    parser.add_argument("--stats", type=Path, help="where a build's statistics go (ASDiv-Aug's stats.json)")
    parser.add_argument(
        "--settings",
        help="JSON of the dataset's result-affecting `data` settings (default: resolved from --params)",
    )
    parser.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from softcot.plan import Plan

    plan = Plan.load(args.params)
    settings = plan.prepare(args.dataset).settings if args.settings is None else parse_settings(args.settings)
    count = prepare(
        args.dataset, args.split, settings, RawFiles.from_settings(plan.data_sources()), args.out, args.stats
    )
    print(f"{args.out}: {count} {args.dataset} {args.split} examples")
    return 0
