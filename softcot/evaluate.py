"""Evaluation: one method of a model pair on a dataset, for every seed in one job.

A *row* is one (example, seed, sample) triple. All rows of a job share generation batches, so
the five seeds of an example cost one padded batch, not five runs; every row samples from its
own generator seeded from (seed, example id, sample), so its output does not depend on what
else is in its batch (softcot.generate). With `chain_streams: shared`, sample r of every chain
of a method with chains draws one stream instead (softcot.records.stream_sample). What a method
puts into the base model (prompts, soft thoughts) is the method's business (softcot.methods);
this driver batches, samples, extracts, votes and writes.

Completed batches are appended to a partial file, so an interrupted job resumes after the last
completed batch; the final prediction files appear atomically. A sharded evaluation runs one job
per shard of examples (`--shard K/N --rows FILE`, each with its own partial file) and `softcot
merge` writes the prediction files (softcot.shards); both end in softcot.records. The command
line is softcot.commands.evaluate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from softcot.generate import SamplingConfig, generate, left_pad, row_seed
from softcot.io import dumps_jsonl_record, write_text_atomic
from softcot.prompts.render import PromptRenderer
from softcot.records import (
    Evaluation,
    Row,
    all_rows,
    check_outputs,
    seed_metrics,
    seed_records,
    stream_sample,
    write_seed_files,
)
from softcot.resources import CPU_BATCH_SIZE, architecture_of, auto_batch_size
from softcot.shards import write_rows

__all__ = ["Job", "Row", "all_rows", "evaluate", "evaluate_shard", "seed_metrics", "seed_records"]

PARTIAL_NAME = ".partial.jsonl"


class InputBuilder(Protocol):
    """What a method gives the engine: the base prompts, per-example work shared by every seed and
    sample, the base's input embeddings of a batch, and the tensors that decide its outputs
    (softcot.methods.base.Method implements it)."""

    def base_prompts(self, job: Job) -> list[list[int]]: ...

    def prepare(self, job: Job) -> None: ...

    def input_embeddings(
        self, job: Job, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None: ...

    def fingerprint_tensors(self, job: Job) -> list[torch.Tensor]: ...


@dataclass
class Job(Evaluation):
    """Everything one evaluation needs, loaded once (the Evaluation's fields come first)."""

    base: Any  # softcot.models.LoadedModel
    base_renderer: PromptRenderer
    method: InputBuilder
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
    seeds = [
        row_seed(r.seed, job.examples[r.example]["id"], stream_sample(job.settings, r.sample)) for r in rows
    ]
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
