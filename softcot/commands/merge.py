"""`softcot merge`: a sharded evaluation's shards into its per-seed prediction and metrics files
(softcot.shards checks and writes them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from softcot.data.schema import read_prepared
from softcot.errors import ConfigError
from softcot.io import sha256_file
from softcot.methods.catalog import method_spec
from softcot.plan import Plan, check_keys, eval_setting_keys, parse_settings
from softcot.records import Evaluation
from softcot.shards import merge


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pair", required=True, help="model pair name")
    parser.add_argument("--dataset", required=True, help="the evaluated dataset")
    parser.add_argument("--method", required=True, help="method name (params.yaml methods)")
    parser.add_argument(
        "--settings", help="the evaluation's settings as JSON; default: resolved from --params"
    )
    parser.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")
    parser.add_argument("--test", required=True, help="prepared test file (data/prepared/DATASET/test.jsonl)")
    parser.add_argument("--shards", nargs="+", required=True, help="every shard's rows file, in shard order")
    parser.add_argument(
        "--predictions", nargs="+", required=True, help="one prediction file per seed, in the seeds' order"
    )
    parser.add_argument("--metrics", nargs="+", required=True, help="one metrics file per seed, likewise")
    parser.add_argument(
        "--artefact", help="the trained artefact the shards read; its hash goes into the metrics"
    )


def run(args: argparse.Namespace) -> int:
    if args.settings is None:
        settings = Plan.load(args.params).evaluate(args.pair, args.dataset, args.method).settings
    else:
        settings = parse_settings(args.settings)
    check_keys(settings, eval_setting_keys(str(settings.get("kind"))), "--settings")
    artefact = method_spec(settings["kind"]).artefact
    if artefact is not None and args.artefact is None:
        raise ConfigError(f"method {args.method!r} needs its trained {artefact.name}: pass --artefact")
    examples = read_prepared(Path(args.test))
    if settings.get("limit"):
        examples = examples[: int(settings["limit"])]
    artefact_sha256 = sha256_file(args.artefact) if args.artefact else None
    evaluation = Evaluation(
        args.pair, args.dataset, args.method, settings, examples, artefact_sha256=artefact_sha256
    )
    predictions = [Path(p) for p in args.predictions]
    merge(evaluation, [Path(p) for p in args.shards], predictions, [Path(p) for p in args.metrics])
    for path in predictions:
        print(path)
    return 0
