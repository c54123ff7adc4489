"""Evaluation: one method of a model pair on a dataset, for every seed in one job.

A *row* is one (example, seed, sample) triple. All rows of a job share generation batches, so
the five seeds of an example cost one padded batch, not five runs; every row samples from its
own generator seeded from (seed, example id, sample), so its output does not depend on what
else is in its batch (softcot.generate). What a method puts into the base model (prompts, soft
thoughts) is the method's business (softcot.methods); this driver batches, samples, extracts,
votes and writes.

Completed batches are appended to a partial file, so an interrupted job resumes after the last
completed batch; the final prediction files appear atomically. A sharded evaluation runs one job
per shard of examples (`--shard K/N --rows FILE`, each with its own partial file) and `softcot
merge` writes the prediction files (softcot.shards); both end in softcot.records.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from softcot.data.schema import read_prepared
from softcot.errors import ConfigError
from softcot.generate import SamplingConfig, generate, left_pad, row_seed
from softcot.io import dumps_jsonl_record, write_text_atomic
from softcot.methods import Method, method_class
from softcot.models.registry import add_local_path_argument
from softcot.plan import Plan, check_keys, eval_setting_keys, parse_settings
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.records import (
    Evaluation,
    Row,
    all_rows,
    check_outputs,
    seed_metrics,
    seed_records,
    write_seed_files,
)
from softcot.resources import (
    CPU_BATCH_SIZE,
    add_threads_argument,
    architecture_of,
    auto_batch_size,
    parse_batch_size,
    set_torch_threads,
)
from softcot.shards import parse_shard, shard_bounds, write_rows

__all__ = ["Job", "Row", "all_rows", "evaluate", "evaluate_shard", "seed_metrics", "seed_records"]

PARTIAL_NAME = ".partial.jsonl"


@dataclass
class Job(Evaluation):
    """Everything one evaluation needs, loaded once (the Evaluation's fields come first)."""

    base: Any  # softcot.models.LoadedModel
    base_renderer: PromptRenderer
    method: Method
    batch_size: int | None  # rows per generation batch, None = auto; cannot change an output
    assistant: Any | None = None
    assistant_renderer: PromptRenderer | None = None
    artefact: Any | None = None  # the method's trained artefact (e.g. the projector)

    @property
    def num_thoughts(self) -> int:
        return int(self.settings["num_thought_tokens"])

    @property
    def example_ids(self) -> list[str]:
        return [example["id"] for example in self.examples]

    def rows_per_batch(self, model: Any, prompt_tokens: int, new_tokens: int, rows: int) -> int:
        """The batch size, or with `auto` (None) the largest batch of rows of `prompt_tokens` +
        `new_tokens` whose KV cache fits `model`'s device now; the choice is logged."""
        if self.batch_size is not None:
            return self.batch_size
        device = next(model.model.parameters()).device
        if device.type != "cuda":
            size, why = CPU_BATCH_SIZE, f"on {device.type}, the default"
        else:
            free, total = torch.cuda.mem_get_info(device)
            itemsize = next(model.model.parameters()).dtype.itemsize
            size = auto_batch_size(
                architecture_of(model.model.config), itemsize, prompt_tokens, new_tokens, free, total, rows
            )
            why = (
                f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free on {device}, "
                f"{prompt_tokens} + {new_tokens} tokens per row"
            )
        print(
            f"softcot evaluate: batch size auto -> {size} rows for {model.spec.name} ({why})", file=sys.stderr
        )
        return size


# --- rows and batches ----------------------------------------------------------------------------
def batches(rows: list[Row], prompt_lengths: list[int], batch_size: int) -> list[list[Row]]:
    """Rows grouped by similar prompt length, longest first, so padding stays small and memory
    peaks in the first batch rather than late in a long run."""
    ordered = sorted(rows, key=lambda r: (-prompt_lengths[r.example], r.example, r.seed, r.sample))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def run_batch(job: Job, rows: list[Row], prompts: list[list[int]], config: SamplingConfig) -> list:
    base = job.base
    device = base.model.device
    ids, mask = left_pad([prompts[r.example] for r in rows], base.pad_id)
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():  # the projection and the splice keep no autograd graph at evaluation
        embeds = job.method.input_embeddings(job, rows, ids, mask)
    seeds = [row_seed(r.seed, job.examples[r.example]["id"], r.sample) for r in rows]
    return generate(base.model, ids, mask, seeds, config, base.stop_ids, base.pad_id, inputs_embeds=embeds)


# --- resume ----------------------------------------------------------------------------------
def job_fingerprint(job: Job, prompts: list[list[int]]) -> str:
    """Identifies what the partial file's rows were generated from: a change discards them."""
    digest = hashlib.sha256(json.dumps(job.settings, sort_keys=True).encode())
    digest.update(json.dumps(prompts).encode())
    for tensor in job.method.fingerprint_tensors(job):
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def load_partial(path: Path, fingerprint: str) -> dict[Row, dict]:
    """The rows an interrupted run finished. The partial file is an append log: a torn last line
    (a kill mid-write) is dropped with a warning; a file that is otherwise unreadable, or from
    other settings, prompts or artefacts, is discarded and the job starts over."""
    if not path.exists():
        return {}
    lines = path.read_bytes().split(b"\n")
    torn = lines[-1] != b""  # every complete record ends with a newline
    records: list[dict] = []
    for lineno, raw in enumerate(lines[:-1] if not torn else lines, start=1):
        try:
            record = json.loads(raw.decode("utf-8"))
            if lineno > 1:
                record = {**record, "_row": Row(record["example"], record["seed"], record["sample"])}
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            if torn and lineno == len(lines):
                warnings.warn(
                    f"{path}:{lineno}: dropping a torn last line (an interrupted write)", stacklevel=2
                )
                break
            warnings.warn(
                f"{path}:{lineno}: unreadable; discarding the partial file and starting over", stacklevel=2
            )
            return {}
        records.append(record)
    if not records or records[0].get("fingerprint") != fingerprint:
        return {}  # settings, prompts or artefacts changed: start over
    return {record.pop("_row"): record for record in records[1:]}


# --- generation ----------------------------------------------------------------------------------
def generate_rows(job: Job, partial: Path) -> tuple[dict[Row, dict], int, float]:
    """Generate every row of the job not already in the partial file (appending each finished batch
    to it); return every row's generation, and the tokens and seconds of this run's generation."""
    prompts = job.method.base_prompts(job)
    job.method.prepare(job)
    config = SamplingConfig.from_settings(job.settings, dataclasses.asdict(job.base.spec.generation))
    fingerprint = job_fingerprint(job, prompts)
    done = load_partial(partial, fingerprint)
    # Rewritten from what was read, so a dropped torn line never stays in the log.
    header = dumps_jsonl_record({"fingerprint": fingerprint})
    write_text_atomic(partial, header + "".join(dumps_jsonl_record(record) for record in done.values()))
    todo = [row for row in all_rows(job) if row not in done]
    lengths = [len(p) for p in prompts]
    new_tokens, seconds = 0, 0.0
    if not todo:
        return done, new_tokens, seconds
    batch_size = job.rows_per_batch(job.base, max(lengths), config.max_new_tokens, len(todo))
    with (
        partial.open("a", encoding="utf-8") as log,
        tqdm(total=len(todo), desc=f"{job.method_name} {job.dataset}", unit="row") as progress,
    ):
        for rows in batches(todo, lengths, batch_size):
            start = time.perf_counter()
            outputs = run_batch(job, rows, prompts, config)
            seconds += time.perf_counter() - start
            tokenizer = job.base.tokenizer
            for row, out in zip(rows, outputs, strict=True):
                record = {
                    "example": row.example,
                    "seed": row.seed,
                    "sample": row.sample,
                    "output": tokenizer.decode(out.token_ids, skip_special_tokens=True),
                    "num_tokens": out.num_tokens,
                    "stopped": out.stopped,
                }
                done[row] = record
                log.write(dumps_jsonl_record(record))
                new_tokens += out.num_tokens
            log.flush()
            progress.update(len(rows))
    return done, new_tokens, seconds


def evaluate(job: Job, predictions: list[Path], metrics: list[Path]) -> list[Path]:
    """Generate every row not already done, then write each seed's prediction and metrics file
    (predictions[i] and metrics[i] belong to settings["seeds"][i])."""
    check_outputs(job, predictions, metrics)
    out_dir = predictions[0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / PARTIAL_NAME
    done, new_tokens, seconds = generate_rows(job, partial)
    write_seed_files(job, done, new_tokens / seconds if seconds else 0.0, predictions, metrics)
    partial.unlink()
    return predictions


def shard_partial(rows_file: Path) -> Path:
    """A shard's own partial file, beside its rows file: shards of one evaluation never share one."""
    return rows_file.with_name(f".{rows_file.stem}.partial.jsonl")


def evaluate_shard(job: Job, rows_file: Path, shard: int, shards: int) -> Path:
    """Generate the rows of one shard (job.examples is that shard's slice) into `rows_file`."""
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    partial = shard_partial(rows_file)
    done, new_tokens, seconds = generate_rows(job, partial) if job.examples else ({}, 0, 0.0)
    write_rows(rows_file, job, shard, shards, done, new_tokens, seconds)
    partial.unlink(missing_ok=True)
    return rows_file


# --- command line --------------------------------------------------------------------------------
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
    from softcot.models.registry import parse_local_paths

    settings, batch_size = _settings(args)
    if (args.shard is None) != (args.rows is None) or (args.shard is None) != bool(args.predictions):
        raise ConfigError("pass either --predictions and --metrics, or --shard K/N and --rows")
    method = method_class(settings["kind"])()
    if method.artefact is not None and args.artefact is None:
        raise ConfigError(f"method {args.method!r} needs its trained {method.artefact.name}: pass --artefact")
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
    if method.artefact is not None:
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
    )
    if method.uses_assistant:
        same = models["assistant"] == models["base"]
        job.assistant = (
            base if same else load_model(models["assistant"], args.models_dir, local_paths=local_paths)
        )
        job.assistant_renderer = PromptRenderer(prompt_set, job.assistant, option_format)
    if method.artefact is not None:
        method.load_artefact(job, Path(args.artefact))
    if args.shard is not None:
        print(evaluate_shard(job, Path(args.rows), shard, shards))
        return 0
    for path in evaluate(job, [Path(p) for p in args.predictions], [Path(p) for p in args.metrics]):
        print(path)
    return 0
