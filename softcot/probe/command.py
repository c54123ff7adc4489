"""`softcot probe`: the thought probe's command line.

softcot probe split   a train split -> fit (the probe projector trains on it) + validation
                      (its last n examples, for choosing the training settings)
softcot probe score   one (pair, dataset, held-out set) -> a per-example NLL file
softcot probe table   per-example files -> reports/thought_probe.{md,csv,json,png}
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from softcot import stats
from softcot.errors import ConfigError, DataError, ModelError
from softcot.io import sha256_file, write_jsonl_atomic
from softcot.plan import PROBE_HELDOUT, Plan, check_keys, parse_settings
from softcot.probe.conditions import conditions
from softcot.probe.heldout import split_train
from softcot.probe.scoring import ProbeInputs, check_disjoint, score
from softcot.probe.table import build_table, write_reports
from softcot.resources import add_threads_argument, set_torch_threads
from softcot.tables import REPORT_SUFFIXES

# The settings each action reads (softcot.plan resolves them; a hand-written --settings is checked).
SPLIT_KEYS = {"validation"}
SCORE_KEYS = {"pair", "option_format", "num_thought_tokens", "examples", "seed", "centred", "train"}
TABLE_KEYS = {
    "name",
    "heldout",
    "preset",
    "pair",
    "role",
    "models",
    "datasets",
    "examples",
    "validation",
    "num_thought_tokens",
    "seed",
    "centred",
    "train",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--settings", help="the step's settings as JSON (Snakemake passes them); default: from --params"
        )
        sub.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")

    split = actions.add_parser("split", help="cut a train split into fit and validation parts")
    split.add_argument("--dataset", required=True)
    common(split)
    split.add_argument("--train", required=True, help="prepared train file")
    split.add_argument("--fit", required=True, help="the fit part to write")
    split.add_argument("--validation", required=True, help="the validation part to write")

    scoring = actions.add_parser("score", help="score every condition on held-out examples")
    scoring.add_argument("--pair", required=True, help="model pair name (params.yaml presets.<preset>.pairs)")
    scoring.add_argument("--dataset", required=True)
    scoring.add_argument("--heldout", choices=PROBE_HELDOUT, default="test", help="which held-out set")
    common(scoring)
    scoring.add_argument("--examples", required=True, help="the held-out examples (prepared format)")
    scoring.add_argument("--fit", required=True, help="the fit part the probe projector trained on")
    scoring.add_argument("--projector", required=True, help="the probe projector checkpoint")
    scoring.add_argument("--record", required=True, help="its training record (projector.json)")
    scoring.add_argument(
        "--centred-projectors", nargs="*", default=[], help="the centred projectors, in probe.centred order"
    )
    scoring.add_argument("--centred-records", nargs="*", default=[], help="their training records, in order")
    scoring.add_argument("--models-dir", default="results/models", help="materialized models")
    scoring.add_argument(
        "--states", default="results/probe/states", help="the probe training's assistant state cache"
    )
    scoring.add_argument("--out", required=True, help="the per-example file to write (JSON lines)")
    scoring.add_argument("--batch-size", type=int, default=16, help="examples per assistant forward pass")
    add_threads_argument(scoring)
    scoring.add_argument(
        "--local-path", action="append", default=[], metavar="MODEL=DIR", help="params models.local_paths"
    )

    table = actions.add_parser("table", help="build reports/thought_probe.* from per-example files")
    table.add_argument("--name", default="thought_probe", help="the report's name (default: %(default)s)")
    common(table)
    for what in ("per-example", "records", "examples", "fit"):
        table.add_argument(f"--{what}", nargs="+", required=True, type=Path, help="one per dataset, in order")
    table.add_argument(
        "--centred-records",
        nargs="*",
        default=[],
        type=Path,
        help="the centred projectors' training records: per dataset in order, each of probe.centred",
    )
    for suffix in REPORT_SUFFIXES:
        table.add_argument(f"--{suffix}", required=True, type=Path, help=f"the {suffix} report to write")
    table.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES)


def _settings(args: argparse.Namespace, resolve: Callable[[Plan], Any], keys: set[str]) -> dict[str, Any]:
    """--settings as given (Snakemake), or the step resolved from --params; either way checked."""
    settings = (
        resolve(Plan.load(args.params)).settings if args.settings is None else parse_settings(args.settings)
    )
    check_keys(settings, keys, "--settings" if args.settings is not None else args.params)
    return settings


def _run_split(args: argparse.Namespace) -> int:
    from softcot.data.schema import read_prepared

    settings = _settings(args, lambda plan: plan.probe_split(args.dataset), SPLIT_KEYS)
    examples = read_prepared(args.train)
    if examples[0]["dataset"] != args.dataset:
        raise DataError(f"{args.train}: holds {examples[0]['dataset']}, not {args.dataset}")
    fit, validation = split_train(examples, int(settings["validation"]), args.train)
    write_jsonl_atomic(args.fit, fit)
    write_jsonl_atomic(args.validation, validation)
    print(
        f"softcot probe split: {len(fit)} fit -> {args.fit}, "
        f"{len(validation)} validation -> {args.validation}"
    )
    return 0


def _check_record(path: Path, settings: dict[str, Any], center: str) -> None:
    """The record's training settings are the probe's, with train.projection_center `center`."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable training record ({exc})") from exc
    trained = record.get("settings", {})
    expected = dict(settings["train"], projection_center=center)
    differing = sorted(k for k, v in expected.items() if trained.get(k) != v)
    if differing or trained.get("pair") != settings["pair"]:
        raise ModelError(
            f"{path}: the probe projector was trained with other settings "
            f"({', '.join(differing) or 'pair'}); train it again (snakemake reruns it)"
        )


def _run_score(args: argparse.Namespace) -> int:
    from softcot.data.schema import read_prepared
    from softcot.models import load_model
    from softcot.models.registry import parse_local_paths
    from softcot.thoughts import check_projector_file, load_projector

    settings = _settings(args, lambda plan: plan.probe(args.pair, args.dataset, args.heldout), SCORE_KEYS)
    set_torch_threads(args.threads)
    examples = read_prepared(args.examples)
    if examples[0]["dataset"] != args.dataset:
        raise DataError(f"{args.examples}: holds {examples[0]['dataset']}, not {args.dataset}")
    if settings["examples"] is not None:
        examples = examples[: int(settings["examples"])]
    train_examples = read_prepared(args.fit)
    if settings["train"]["limit"] is not None:
        train_examples = train_examples[: int(settings["train"]["limit"])]
    inputs = ProbeInputs(
        examples, train_examples, str(args.examples), str(args.fit), Path(args.states), sha256_file(args.fit)
    )
    check_disjoint(inputs)
    centred = list(settings["centred"])
    if not len(args.centred_projectors) == len(args.centred_records) == len(centred):
        raise ConfigError(
            f"pass one --centred-projectors checkpoint and one --centred-records record per centred "
            f"projector of probe.centred {centred}"
        )
    _check_record(Path(args.record), settings, "none")
    for center, record in zip(centred, args.centred_records, strict=True):
        _check_record(Path(record), settings, center)
    local = parse_local_paths(args.local_path)
    models = settings["pair"]
    base = load_model(models["base"], args.models_dir, local_paths=local)
    same = models["assistant"] == models["base"]
    assistant = base if same else load_model(models["assistant"], args.models_dir, local_paths=local)
    projectors = {}
    for center, path in zip(["none", *centred], [args.projector, *args.centred_projectors], strict=True):
        check_projector_file(path, assistant.model.config.hidden_size, base.model.config.hidden_size)
        projectors[center] = load_projector(path, device=base.model.device)
        if projectors[center].center != center:
            raise ModelError(
                f"{path}: a projector with train.projection_center {projectors[center].center!r}, "
                f"expected {center!r}"
            )
    trained = projectors.pop("none")
    records = score(settings, inputs, base, assistant, trained, args.batch_size, projectors)
    write_jsonl_atomic(args.out, records)
    means = {key: np.mean([r["nll"][key] for r in records]) for key, _ in conditions(centred)}
    print("softcot probe score: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()) + f" -> {args.out}")
    return 0


def _run_table(args: argparse.Namespace) -> int:
    if args.resamples < 1:
        raise ConfigError(f"--resamples must be at least 1, got {args.resamples}")
    spec = _settings(args, lambda plan: plan.probe_table(args.name), TABLE_KEYS)
    table = build_table(
        spec, args.per_example, args.records, args.examples, args.fit, args.centred_records, args.resamples
    )
    outputs = {suffix: getattr(args, suffix) for suffix in REPORT_SUFFIXES}
    for path in write_reports(table, outputs):
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    return {"split": _run_split, "score": _run_score, "table": _run_table}[args.action](args)
