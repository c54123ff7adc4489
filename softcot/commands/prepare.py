"""`softcot prepare`: one dataset split from pinned raw files into data/prepared/{dataset}/{split}.jsonl.

Snakemake passes the dataset's result-affecting settings with --settings (so that changing one
reruns exactly that dataset); by hand, they are read from params.yaml. Where the raw files come
from (mirror or download) is read from params.yaml and $SOFTCOT_DATA_MIRROR: it cannot change the
result, because every file is hash-verified.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softcot.config import check_data_settings
from softcot.data.datasets import dataset_names
from softcot.data.prepare import SPLITS, prepare
from softcot.data.sources import RawFiles
from softcot.plan import Plan, parse_settings


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
    plan = Plan.load(args.params)
    settings = plan.prepare(args.dataset).settings if args.settings is None else parse_settings(args.settings)
    check_data_settings(args.dataset, settings)
    count = prepare(
        args.dataset, args.split, settings, RawFiles.from_settings(plan.data_sources()), args.out, args.stats
    )
    print(f"{args.out}: {count} {args.dataset} {args.split} examples")
    return 0
