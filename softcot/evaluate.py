"""Evaluation: one method of a model pair on a dataset, for every seed in one job.

A *row* is one (example, seed, sample) triple. All rows of a job share generation batches, so
the five seeds of an example cost one padded batch, not five runs; every row samples from its
own generator seeded from (seed, example id, sample), so its output does not depend on what
else is in its batch (softcot.generate). Methods (protocol §11):

- cot:        the prompt with no thought hint (N = 0).
- cot-unk:    the hint with BOT, N x UNK, EOT left as the base model's own embeddings.
- assist-cot: the assistant *writes* N hard tokens, decoded greedily once per example (the
              protocol leaves this decoding open; greedy makes the hint a property of the
              example, shared by every seed), and that text fills the hint.
- softcot:    the assistant's states at N placeholders, projected and spliced into the base
              embeddings at the hint's N placeholders (softcot.thoughts).

Completed batches are appended to a partial file, so an interrupted job resumes after the last
completed batch; the final prediction files appear atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from softcot.answers import extract_answer, is_correct
from softcot.config import Config
from softcot.data.schema import read_prepared
from softcot.errors import ConfigError, ModelError
from softcot.generate import SamplingConfig, generate, left_pad, row_seed
from softcot.io import dumps_jsonl_record, read_jsonl, write_json_atomic, write_jsonl_atomic
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots, locate_base_slots
from softcot.prompts.sets import question_text
from softcot.thoughts import (
    Projector,
    assistant_states,
    base_embeddings,
    load_projector,
    right_pad,
    splice_thoughts,
)
from softcot.voting import vote

KINDS = ("cot", "cot-unk", "assist-cot", "softcot")
USES_ASSISTANT = {"assist-cot", "softcot"}
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
    method: str
    settings: dict[str, Any]
    examples: list[dict]
    base: Any  # softcot.models.LoadedModel
    base_renderer: PromptRenderer
    assistant: Any | None = None
    assistant_renderer: PromptRenderer | None = None
    projector: Projector | None = None

    @property
    def kind(self) -> str:
        return self.settings["kind"]

    @property
    def num_thoughts(self) -> int:
        return int(self.settings["num_thought_tokens"])

    @property
    def example_ids(self) -> list[str]:
        return [example["id"] for example in self.examples]


# --- prompts -------------------------------------------------------------------------------------
def base_prompts(job: Job) -> list[list[int]]:
    """The base model's prompt ids per example, as the method defines them."""
    agp = bool(job.settings["add_generation_prompt"])
    if job.kind == "cot":
        return [job.base_renderer.base_ids(ex, 0, agp) for ex in job.examples]
    if job.kind in ("cot-unk", "softcot"):
        return [job.base_renderer.base_ids(ex, job.num_thoughts, agp) for ex in job.examples]
    hints = assistant_hints(job)
    renderer = job.base_renderer
    prompts = []
    for example, hint in zip(job.examples, hints, strict=True):
        question = question_text(example, renderer.option_format)
        content = renderer.prompt_set.base_content(example["dataset"], question, hint)
        prompts.append(renderer.encode(renderer.conversation([("user", content)], agp)))
    return prompts


def _assistant_inputs(
    job: Job, indices: Sequence[int], n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded assistant prompts of some examples and the start of each one's N x UNK slot."""
    sequences = [job.assistant_renderer.assistant_ids(job.examples[i], n) for i in indices]
    ids, mask = right_pad(sequences, job.assistant.pad_id)
    example_ids = [job.examples[i]["id"] for i in indices]
    starts = locate_assistant_slots(ids, mask, job.assistant.placeholder_ids, n, example_ids)
    return ids, mask, starts


def assistant_hints(job: Job) -> list[str]:
    """Assist-CoT: the assistant continues its reply ("Here are N tokens ...: ") with N greedy tokens."""
    n = int(job.settings["assist_hard_tokens"])
    batch_size = int(job.settings["batch_size"])
    config = SamplingConfig(greedy=True, max_new_tokens=n)
    hints: list[str] = []
    device = job.assistant.model.device
    for lo in tqdm(range(0, len(job.examples), batch_size), desc="assistant hints", unit="batch"):
        indices = range(lo, min(lo + batch_size, len(job.examples)))
        ids, mask, starts = _assistant_inputs(job, indices, n)
        # The reply's slot marks where the assistant's own text begins: cut the prompt there.
        prefixes = [ids[row, : int(start)].tolist() for row, start in enumerate(starts)]
        prompt_ids, prompt_mask = left_pad(prefixes, job.assistant.pad_id)
        outputs = generate(
            job.assistant.model,
            prompt_ids.to(device),
            prompt_mask.to(device),
            row_seeds=[0] * len(prefixes),
            config=config,
            stop_ids=job.assistant.stop_ids,
            pad_id=job.assistant.pad_id,
        )
        tokenizer = job.assistant.tokenizer
        hints += [tokenizer.decode(out.token_ids, skip_special_tokens=True).strip() for out in outputs]
    return hints


@torch.no_grad()
def thought_states(job: Job) -> torch.Tensor:
    """SoftCoT: the assistant's states at its N slot positions for every example, [E, N, H_a].

    They depend on the example only, never on the seed, so they are computed once per job.
    """
    n = job.num_thoughts
    batch_size = int(job.settings["batch_size"])
    device = job.assistant.model.device
    chunks = []
    for lo in tqdm(range(0, len(job.examples), batch_size), desc="soft thoughts", unit="batch"):
        ids, mask, starts = _assistant_inputs(job, range(lo, min(lo + batch_size, len(job.examples))), n)
        chunks.append(assistant_states(job.assistant.model, ids.to(device), mask.to(device), starts, n))
    return torch.cat(chunks)


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


def run_batch(
    job: Job, rows: list[Row], prompts: list[list[int]], states: torch.Tensor | None, config
) -> list:
    base = job.base
    device = base.model.device
    ids, mask = left_pad([prompts[r.example] for r in rows], base.pad_id)
    ids, mask = ids.to(device), mask.to(device)
    embeds = None
    if states is not None:
        example_ids = [job.examples[r.example]["id"] for r in rows]
        starts = locate_base_slots(ids, mask, base.placeholder_ids, job.num_thoughts, example_ids)
        thoughts = job.projector(states[[r.example for r in rows]])
        embeds = splice_thoughts(base_embeddings(base.model, ids), starts, thoughts)
    seeds = [row_seed(r.seed, job.examples[r.example]["id"], r.sample) for r in rows]
    return generate(base.model, ids, mask, seeds, config, base.stop_ids, base.pad_id, inputs_embeds=embeds)


# --- resume ----------------------------------------------------------------------------------
def job_fingerprint(job: Job, prompts: list[list[int]]) -> str:
    """Identifies what the partial file's rows were generated from: a change discards them."""
    digest = hashlib.sha256(json.dumps(job.settings, sort_keys=True).encode())
    digest.update(json.dumps(prompts).encode())
    if job.projector is not None:
        for tensor in job.projector.state_dict().values():
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def load_partial(path: Path, fingerprint: str) -> dict[Row, dict]:
    if not path.exists():
        return {}
    done: dict[Row, dict] = {}
    for lineno, record in read_jsonl(path):
        if lineno == 1:
            if record.get("fingerprint") != fingerprint:
                return {}  # settings, prompts or projector changed: start over
            continue
        done[Row(record["example"], record["seed"], record["sample"])] = record
    return done


# --- records -------------------------------------------------------------------------------------
def seed_records(job: Job, seed: int, done: dict[Row, dict]) -> list[dict]:
    """One prediction record per example for one seed (design.md §4), votes for k > 1 samples."""
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
            "method": job.method,
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
        "method": job.method,
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


def evaluate(job: Job, out_dir: Path) -> list[Path]:
    """Generate every row not already done, then write one prediction and metrics file per seed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = base_prompts(job)
    states = thought_states(job) if job.kind == "softcot" else None
    config = SamplingConfig.from_settings(job.settings, dataclasses.asdict(job.base.spec.generation))
    partial = out_dir / PARTIAL_NAME
    fingerprint = job_fingerprint(job, prompts)
    done = load_partial(partial, fingerprint)
    if not done:
        partial.write_text(dumps_jsonl_record({"fingerprint": fingerprint}))
    todo = [row for row in all_rows(job) if row not in done]
    lengths = [len(p) for p in prompts]
    new_tokens, seconds = 0, 0.0
    with (
        partial.open("a", encoding="utf-8") as log,
        tqdm(total=len(todo), desc=f"{job.method} {job.dataset}", unit="row") as progress,
    ):
        for rows in batches(todo, lengths, int(job.settings["batch_size"])):
            start = time.perf_counter()
            outputs = run_batch(job, rows, prompts, states, config)
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
    written = []
    for seed in job.settings["seeds"]:
        records = seed_records(job, seed, done)
        path = out_dir / f"seed{seed}.jsonl"
        write_jsonl_atomic(path, records)
        write_json_atomic(
            out_dir / f"seed{seed}.metrics.json", seed_metrics(job, seed, records, tokens_per_second)
        )
        written.append(path)
    partial.unlink()
    return written


# --- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pair", required=True, help="model pair name (params.yaml presets.<preset>.pairs)")
    parser.add_argument("--dataset", required=True, help="dataset to evaluate on (its test split)")
    parser.add_argument("--method", required=True, help="method name (params.yaml methods)")
    parser.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")
    parser.add_argument("--settings", help="eval settings of the method as JSON; replaces params.yaml's")
    parser.add_argument(
        "--pair-models", help='the pair as JSON {"assistant": ..., "base": ...}; replaces params.yaml\'s'
    )
    parser.add_argument(
        "--option-format",
        help="how options are written into questions (default: params data.aqua.option_format)",
    )
    parser.add_argument("--test", help="prepared test file (default: data/prepared/DATASET/test.jsonl)")
    parser.add_argument(
        "--models-dir", default="results/models", help="materialized models (default: %(default)s)"
    )
    parser.add_argument(
        "--projector", help="projector checkpoint (softcot only; default: results/projectors/PAIR/DS)"
    )
    parser.add_argument(
        "--out-dir", help="where the seed files go (default: results/predictions/PAIR/DATASET/METHOD)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def _resolve(args: argparse.Namespace) -> tuple[dict, dict, str]:
    """(eval settings, pair models, option format): from the arguments, else from params.yaml."""
    cfg = None if (args.settings and args.pair_models and args.option_format) else Config.load(args.params)
    settings = json.loads(args.settings) if args.settings else cfg.eval_settings(args.method)
    pair = json.loads(args.pair_models) if args.pair_models else cfg.pair(args.pair)
    option_format = args.option_format or cfg.raw["data"]["aqua"]["option_format"]
    if settings.get("kind") not in KINDS:
        raise ConfigError(
            f"method {args.method!r}: kind must be one of {KINDS}, got {settings.get('kind')!r}"
        )
    if "seeds" not in settings:
        seeds_from = cfg or Config.load(args.params)
        settings["seeds"] = seeds_from.seeds
    return settings, pair, option_format


def run(args: argparse.Namespace) -> int:
    from softcot.models import load_model  # torch-heavy: only when evaluating

    if args.threads:
        torch.set_num_threads(args.threads)
    settings, pair, option_format = _resolve(args)
    kind = settings["kind"]
    test = Path(args.test or f"data/prepared/{args.dataset}/test.jsonl")
    examples = read_prepared(test)
    if settings.get("limit"):
        examples = examples[: int(settings["limit"])]
    prompt_set = load_prompt_set(settings["prompt_set"])
    base = load_model(pair["base"], args.models_dir)
    job = Job(
        args.pair,
        args.dataset,
        args.method,
        settings,
        examples,
        base,
        PromptRenderer(prompt_set, base, option_format),
    )
    if kind in USES_ASSISTANT:
        job.assistant = (
            base if pair["assistant"] == pair["base"] else load_model(pair["assistant"], args.models_dir)
        )
        job.assistant_renderer = PromptRenderer(prompt_set, job.assistant, option_format)
    if kind == "softcot":
        default = (
            f"results/projectors/{args.pair}/{Config.projector_dataset(args.dataset)}/projector.safetensors"
        )
        path = Path(args.projector or default)
        # A missing projector is an error, never a random projection (protocol §14 row 11).
        job.projector = load_projector(path, device=base.model.device)
        expected = [base.model.config.hidden_size, job.assistant.model.config.hidden_size]
        if list(job.projector.weight.shape) != expected:
            raise ModelError(
                f"{path}: weight {list(job.projector.weight.shape)} does not map "
                f"{pair['assistant']} to {pair['base']} (expected {expected})"
            )
    out_dir = Path(args.out_dir or f"results/predictions/{args.pair}/{args.dataset}/{args.method}")
    for path in evaluate(job, out_dir):
        print(path)
    return 0
