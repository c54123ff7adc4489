"""`softcot train`: fit one trained artefact (a projector or an adapter) of a model pair on a
dataset's training split. Resolves the step (from --settings, or params.yaml), checks it, and hands
it to the method that owns the artefact (the methods' modules build their recipe; softcot.training
holds the loop).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softcot.config import check_train_settings
from softcot.data.datasets import dataset_spec
from softcot.errors import ConfigError
from softcot.io import write_json_atomic
from softcot.methods import method_class
from softcot.models.registry import add_local_path_argument, parse_local_paths
from softcot.plan import Plan, parse_settings
from softcot.resources import add_threads_argument, set_torch_threads
from softcot.training.context import TrainingContext


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pair", required=True, help="model pair name (params.yaml presets.<preset>.pairs)")
    parser.add_argument("--dataset", required=True, help="dataset whose train split to fit")
    parser.add_argument(
        "--artefact", default="projector", help="what to train (default: %(default)s, SoftCoT's projection)"
    )
    parser.add_argument(
        "--settings",
        help="the step's settings as JSON (what `snakemake -n -p` shows); default: resolved from --params",
    )
    parser.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")
    parser.add_argument(
        "--train", required=True, help="prepared train file (data/prepared/DATASET/train.jsonl)"
    )
    parser.add_argument(
        "--models-dir", default="results/models", help="materialized models (default: %(default)s)"
    )
    parser.add_argument(
        "--states", default="results/states", help="assistant state cache (default: %(default)s)"
    )
    parser.add_argument("--checkpoint", required=True, help="the checkpoint file to write")
    parser.add_argument("--record", required=True, help="the training record (JSON) to write")
    add_threads_argument(parser)
    add_local_path_argument(parser)


def run(args: argparse.Namespace) -> int:
    spec = dataset_spec(args.dataset)
    if not spec.trains:
        raise ConfigError(
            f"dataset {args.dataset!r} has no training set; it is evaluated with the "
            f"{spec.artefact_dataset} {args.artefact}"
        )
    if args.settings is None:
        settings = Plan.load(args.params).train(args.artefact, args.pair, args.dataset).settings
        settings = check_train_settings(settings, args.params)
    else:
        settings = check_train_settings(parse_settings(args.settings), "--settings")
    set_torch_threads(args.threads)
    context = TrainingContext(
        pair=args.pair,
        dataset=args.dataset,
        settings=settings,
        train_file=Path(args.train),
        models_dir=Path(args.models_dir),
        states_dir=Path(args.states),
        checkpoint=Path(args.checkpoint),
        record=Path(args.record),
        local_paths=parse_local_paths(args.local_path),
    )
    record = method_class(settings["kind"])().train(context)
    write_json_atomic(context.record, record)
    return 0
