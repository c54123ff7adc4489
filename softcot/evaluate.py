"""Evaluation: one method of a model pair on a dataset, for every seed in one job.

A *row* is one (example, seed, sample) triple. All rows of a job share generation batches, so
the five seeds of an example cost one padded batch, not five runs; every row samples from its
own generator seeded from (seed, example id, sample), so its output does not depend on what
else is in its batch (softcot.generate). What a method puts into the base model (prompts, soft
thoughts) is the method's business (softcot.methods); this driver batches, samples, extracts,
votes and writes.

Completed batches are appended to a partial file, so an interrupted job resumes after the last
completed batch; the final prediction files appear atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from softcot.answers import extract_answer, is_correct
from softcot.data.schema import read_prepared
from softcot.errors import ConfigError
from softcot.generate import SamplingConfig, generate, left_pad, row_seed
from softcot.io import dumps_jsonl_record, write_json_atomic, write_jsonl_atomic, write_text_atomic
from softcot.methods import Method, method_class
from softcot.plan import Plan, check_keys, eval_setting_keys, parse_settings
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.voting import vote

PARTIAL_NAME = ".partial.jsonl"


@dataclass(frozen=True)
class Row:
    example: int  # index into the job's examples
    seed: int
    sample: int


@dataclass
class Job:
    """Everything one evaluation needs, loaded once."""

    pair: str
    dataset: str
    method_name: str
    settings: dict[str, Any]
    examples: list[dict]
    base: Any  # softcot.models.LoadedModel
    base_renderer: PromptRenderer
    method: Method
    batch_size: int  # rows per generation batch; cannot change an output
    assistant: Any | None = None
    assistant_renderer: PromptRenderer | None = None
    artefact: Any | None = None  # the method's trained artefact (e.g. the projector)

    @property
    def num_thoughts(self) -> int:
        return int(self.settings["num_thought_tokens"])

    @property
    def example_ids(self) -> list[str]:
        return [example["id"] for example in self.examples]


# --- rows and batches ----------------------------------------------------------------------------
def all_rows(job: Job) -> list[Row]:
    samples = int(job.settings["samples"])
    return [
        Row(example, seed, sample)
        for example in range(len(job.examples))
        for seed in job.settings["seeds"]
        for sample in range(samples)
    ]


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


# --- records -------------------------------------------------------------------------------------
def seed_records(job: Job, seed: int, done: dict[Row, dict]) -> list[dict]:
    """One prediction record per example for one seed (docs/design.md §4), votes for k > 1 samples."""
    extractor, samples = job.settings["extractor"], int(job.settings["samples"])
    records = []
    for index, example in enumerate(job.examples):
        generations = [done[Row(index, seed, s)] for s in range(samples)]
        answers = [extract_answer(job.dataset, g["output"], extractor) for g in generations]
        prediction = answers[0] if samples == 1 else vote(answers, job.settings["vote"])
        record = {
            "id": example["id"],
            "dataset": job.dataset,
            "pair": job.pair,
            "method": job.method_name,
            "seed": seed,
            "output": generations[0]["output"],
            "prediction": prediction,
            "gold": example["answer"],
            "correct": is_correct(job.dataset, prediction, example["answer"], extractor),
            "generated_tokens": sum(g["num_tokens"] for g in generations),
        }
        if samples > 1:
            record["samples"] = answers
            record["outputs"] = [g["output"] for g in generations]
        records.append(record)
    return records


def seed_metrics(job: Job, seed: int, records: list[dict], tokens_per_second: float) -> dict:
    n = len(records)
    return {
        "pair": job.pair,
        "dataset": job.dataset,
        "method": job.method_name,
        "seed": seed,
        "n": n,
        "correct": sum(r["correct"] for r in records),
        "accuracy": sum(r["correct"] for r in records) / n,
        "extraction_failures": sum(r["prediction"] is None for r in records),
        "mean_generated_tokens": sum(r["generated_tokens"] for r in records) / n,
        "tokens_per_second": tokens_per_second,
        "extractor": job.settings["extractor"],
        "vote": job.settings["vote"],
        "settings": job.settings,
    }


def evaluate(job: Job, predictions: list[Path], metrics: list[Path]) -> list[Path]:
    """Generate every row not already done, then write each seed's prediction and metrics file
    (predictions[i] and metrics[i] belong to settings["seeds"][i])."""
    seeds = job.settings["seeds"]
    if not len(predictions) == len(metrics) == len(seeds):
        raise ConfigError(
            f"{len(seeds)} seeds need as many prediction and metrics files "
            f"(got {len(predictions)} and {len(metrics)})"
        )
    out_dir = predictions[0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = job.method.base_prompts(job)
    job.method.prepare(job)
    config = SamplingConfig.from_settings(job.settings, dataclasses.asdict(job.base.spec.generation))
    partial = out_dir / PARTIAL_NAME
    fingerprint = job_fingerprint(job, prompts)
    done = load_partial(partial, fingerprint)
    # Rewritten from what was read, so a dropped torn line never stays in the log.
    header = dumps_jsonl_record({"fingerprint": fingerprint})
    write_text_atomic(partial, header + "".join(dumps_jsonl_record(record) for record in done.values()))
    todo = [row for row in all_rows(job) if row not in done]
    lengths = [len(p) for p in prompts]
    new_tokens, seconds = 0, 0.0
    with (
        partial.open("a", encoding="utf-8") as log,
        tqdm(total=len(todo), desc=f"{job.method_name} {job.dataset}", unit="row") as progress,
    ):
        for rows in batches(todo, lengths, job.batch_size):
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
    tokens_per_second = new_tokens / seconds if seconds else 0.0
    for seed, prediction_path, metrics_path in zip(seeds, predictions, metrics, strict=True):
        records = seed_records(job, seed, done)
        write_jsonl_atomic(prediction_path, records)
        write_json_atomic(metrics_path, seed_metrics(job, seed, records, tokens_per_second))
    partial.unlink()
    return predictions


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
    parser.add_argument(
        "--predictions", nargs="+", required=True, help="one prediction file per seed, in the seeds' order"
    )
    parser.add_argument("--metrics", nargs="+", required=True, help="one metrics file per seed, likewise")
    parser.add_argument(
        "--batch-size", type=int, help="rows per generation batch (default: params eval.batch_size)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--local-path",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="load MODEL as materialized from a pre-downloaded directory (params models.local_paths)",
    )


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """(the step's settings, batch size): from the arguments, else resolved from params.yaml."""
    step = None
    if args.settings is None or args.batch_size is None:
        step = Plan.load(args.params).evaluate(args.pair, args.dataset, args.method)
    settings = parse_settings(args.settings) if args.settings is not None else step.settings
    check_keys(settings, eval_setting_keys(str(settings.get("kind"))), "--settings")
    batch_size = args.batch_size if args.batch_size is not None else step.runtime["batch_size"]
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    return settings, batch_size


def run(args: argparse.Namespace) -> int:
    from softcot.models import load_model  # torch-heavy: only when evaluating
    from softcot.models.registry import parse_local_paths

    settings, batch_size = _settings(args)
    method = method_class(settings["kind"])()
    if method.artefact is not None and args.artefact is None:
        raise ConfigError(f"method {args.method!r} needs its trained {method.artefact.name}: pass --artefact")
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = read_prepared(Path(args.test))
    if settings.get("limit"):
        examples = examples[: int(settings["limit"])]
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
    for path in evaluate(job, [Path(p) for p in args.predictions], [Path(p) for p in args.metrics]):
        print(path)
    return 0
