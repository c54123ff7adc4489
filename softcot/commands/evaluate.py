"""`softcot evaluate`: one method of a model pair on a dataset, every seed, or one shard of it.

Resolves the step (from --settings, or params.yaml), loads what the method needs (the base, the
assistant, its trained artefact) and hands the job to the engine (softcot.evaluate).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from softcot.data.schema import read_prepared
from softcot.errors import ConfigError
from softcot.evaluate import Job, evaluate, evaluate_shard
from softcot.io import sha256_file
from softcot.methods import method_class
from softcot.methods.catalog import method_spec
from softcot.models.registry import add_local_path_argument, parse_local_paths
from softcot.plan import Plan, check_keys, eval_setting_keys, parse_settings
from softcot.prompts.render import PromptRenderer
from softcot.prompts.sets import load_prompt_set
from softcot.records import Evaluation
from softcot.resources import add_threads_argument, parse_batch_size, set_torch_threads
from softcot.shards import parse_shard, shard_bounds, write_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pair", required=True, help="model pair name (params.yaml presets.<preset>.pairs)")
    parser.add_argument("--dataset", required=True, help="dataset to evaluate on (its test split)")
    parser.add_argument("--method", required=True, help="method name (params.yaml methods)")
    parser.add_argument(
        "--settings",
        help="the step's settings as JSON (what `snakemake -n -p` shows); default: resolved from --params",
    )
    parser.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")
    parser.add_argument("--test", required=True, help="prepared test file (data/prepared/DATASET/test.jsonl)")
    parser.add_argument(
        "--models-dir", default="results/models", help="materialized models (default: %(default)s)"
    )
    parser.add_argument("--artefact", help="the method's trained artefact, e.g. a projector checkpoint")
    parser.add_argument("--predictions", nargs="+", help="one prediction file per seed, in the seeds' order")
    parser.add_argument("--metrics", nargs="+", help="one metrics file per seed, likewise")
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="evaluate only shard K of N of the examples into --rows (then `softcot merge` the N shards)",
    )
    parser.add_argument(
        "--rows", help="the shard's rows file (with --shard, instead of --predictions/--metrics)"
    )
    parser.add_argument(
        "--batch-size",
        help="rows per generation batch, or auto: the largest that fits the GPU's free memory "
        "(default: params eval.batch_size)",
    )
    add_threads_argument(parser)
    add_local_path_argument(parser)


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], int | None]:
    """(the step's settings, batch size or None for auto): from the arguments, else params.yaml."""
    if args.settings is None:
        step = Plan.load(args.params).evaluate(args.pair, args.dataset, args.method)
        settings, batch_size = step.settings, step.runtime["batch_size"]
    else:
        settings = parse_settings(args.settings)
        batch_size = args.batch_size if args.batch_size is not None else Plan.load(args.params).batch_size
    if args.batch_size is not None:
        batch_size = args.batch_size
    check_keys(settings, eval_setting_keys(str(settings.get("kind"))), "--settings")
    return settings, parse_batch_size(batch_size)


def run(args: argparse.Namespace) -> int:
    from softcot.models import load_model  # torch-heavy: only when evaluating

    settings, batch_size = _settings(args)
    if (args.shard is None) != (args.rows is None) or (args.shard is None) != bool(args.predictions):
        raise ConfigError("pass either --predictions and --metrics, or --shard K/N and --rows")
    spec = method_spec(settings["kind"])
    if spec.artefact is not None and args.artefact is None:
        raise ConfigError(f"method {args.method!r} needs its trained {spec.artefact.name}: pass --artefact")
    method = method_class(spec.kind)()
    set_torch_threads(args.threads)
    examples = read_prepared(Path(args.test))
    if settings.get("limit"):
        examples = examples[: int(settings["limit"])]
    if args.shard is not None:
        shard, shards = parse_shard(args.shard)
        lo, hi = shard_bounds(len(examples), shard, shards)
        examples = examples[lo:hi]
        if not examples:  # more shards than examples: nothing to generate, no model to load
            write_rows(
                Path(args.rows),
                Evaluation(args.pair, args.dataset, args.method, settings, []),
                shard,
                shards,
                {},
                0,
                0.0,
            )
            print(args.rows)
            return 0
    if spec.artefact is not None:
        method.check_artefact(Path(args.artefact))
    prompt_set = load_prompt_set(settings["prompt_set"])
    models = settings["pair"]
    local_paths = parse_local_paths(args.local_path)
    base = load_model(models["base"], args.models_dir, local_paths=local_paths)
    option_format = settings["option_format"]
    job = Job(
        args.pair,
        args.dataset,
        args.method,
        settings,
        examples,
        base,
        PromptRenderer(prompt_set, base, option_format),
        method,
        batch_size,
        artefact_sha256=sha256_file(args.artefact) if spec.artefact is not None else None,
    )
    if spec.uses_assistant:
        same = models["assistant"] == models["base"]
        job.assistant = (
            base if same else load_model(models["assistant"], args.models_dir, local_paths=local_paths)
        )
        job.assistant_renderer = PromptRenderer(prompt_set, job.assistant, option_format)
    if spec.artefact is not None:
        method.load_artefact(job, Path(args.artefact))
    if args.shard is not None:
        print(evaluate_shard(job, Path(args.rows), shard, shards))
        return 0
    for path in evaluate(job, [Path(p) for p in args.predictions], [Path(p) for p in args.metrics]):
        print(path)
    return 0
