"""Generation throughput: the reference's one-example-at-a-time loop against softcot.generate.

Same examples, same seeds, same sampler and token limit on the tiny preset's base model
(SmolLM2-135M-Instruct, materialized under results/models/), prompts rendered as the Zero-Shot CoT
method renders them. Prints one JSON object with the generated tokens per second of each and
their ratio. A benchmark, not a test:

    python benchmarks/eval_throughput.py [--examples 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from softcot.config import Config
from softcot.errors import SoftCoTError
from softcot.generate import SamplingConfig, generate, left_pad, row_seed
from softcot.io import load_jsonl
from softcot.models.load import load_model
from softcot.prompts import PromptRenderer, load_prompt_set

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "results" / "models"
TEST_FILE = ROOT / "data" / "prepared" / "gsm8k" / "test.jsonl"
FALLBACK_QUESTIONS = [
    "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?",
    "A train travels 60 miles per hour for 2.5 hours. How far does it go?",
    "Sara buys 4 notebooks at $3 each and a pen for $2. How much does she spend?",
    "There are 24 students and each group has 4 students. How many groups are there?",
    "A shirt costs $20 and is on sale for 25% off. What is the sale price?",
    "Mike reads 15 pages a day. How many pages does he read in 2 weeks?",
    "A rectangle is 8 cm long and 5 cm wide. What is its area?",
    "Anna had 50 stickers, gave 18 to Ben and got 7 from Carl. How many does she have?",
]


def examples(count: int) -> list[dict]:
    """The prepared GSM8K test set's first questions if present, else built-in short problems."""
    if TEST_FILE.exists():
        return load_jsonl(TEST_FILE)[:count]
    return [
        {"id": f"builtin-{i}", "dataset": "gsm8k", "question": q, "options": None}
        for i, q in enumerate(FALLBACK_QUESTIONS[:count])
    ]


def count_tokens(new_tokens: list[int], stop_ids: set[int]) -> int:
    """Generated tokens up to and including the first stop token; padding never counts."""
    for i, token in enumerate(new_tokens):
        if token in stop_ids:
            return i + 1
    return len(new_tokens)


def reference_loop(model, prompts, seeds, config: SamplingConfig, stop_ids, pad_id) -> int:
    """The reference's way: one example at a time, global RNG re-seeded per example, HF generate."""
    total = 0
    for ids in prompts:
        for seed in seeds:
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=config.top_k,
                repetition_penalty=config.repetition_penalty or 1.0,
                max_new_tokens=config.max_new_tokens,
                eos_token_id=list(stop_ids),
                pad_token_id=pad_id,
            )
            total += count_tokens(out[0, len(ids) :].tolist(), set(stop_ids))
    return total


def engine(model, prompts, ids, seeds, config: SamplingConfig, stop_ids, pad_id, batch_size: int) -> int:
    """softcot.generate: rows (example x seed) in example-major order, `batch_size` rows per call."""
    rows = [
        (prompt, row_seed(seed, example_id))
        for prompt, example_id in zip(prompts, ids, strict=True)
        for seed in seeds
    ]
    total = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        input_ids, attention_mask = left_pad([prompt for prompt, _ in chunk], pad_id)
        results = generate(model, input_ids, attention_mask, [s for _, s in chunk], config, stop_ids, pad_id)
        total += sum(r.num_tokens for r in results)
    return total


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = fn(*args)
    return tokens, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8, help="GSM8K test questions (default 8)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args(argv)

    params = Config.load(args.params)
    settings = params.eval_settings("cot")
    base_name = params.pair(params.preset["roles"]["main"])["base"]
    try:
        base = load_model(base_name, MODELS_DIR, device="cpu")
    except SoftCoTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = SamplingConfig.from_settings(settings, dataclasses.asdict(base.spec.generation))
    renderer = PromptRenderer(
        load_prompt_set(settings["prompt_set"]), base, params.raw["data"]["aqua"]["option_format"]
    )
    chosen = examples(args.examples)
    prompts = [renderer.base_ids(ex, 0, settings["add_generation_prompt"]) for ex in chosen]
    example_ids = [ex["id"] for ex in chosen]
    seeds = settings["seeds"]
    stop_ids, pad_id = base.stop_ids, base.pad_id

    ref_tokens, ref_seconds = timed(reference_loop, base.model, prompts, seeds, config, stop_ids, pad_id)
    eng_tokens, eng_seconds = timed(
        engine, base.model, prompts, example_ids, seeds, config, stop_ids, pad_id, settings["batch_size"]
    )
    ref_rate, eng_rate = ref_tokens / ref_seconds, eng_tokens / eng_seconds
    report = {
        "model": base_name,
        "examples": len(prompts),
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
        "seeds": seeds,
        "rows": len(prompts) * len(seeds),
        "max_new_tokens": config.max_new_tokens,
        "top_k": config.top_k,
        "batch_size": settings["batch_size"],
        "torch_threads": torch.get_num_threads(),
        "reference": {
            "tokens": ref_tokens,
            "seconds": round(ref_seconds, 2),
            "tok_per_s": round(ref_rate, 1),
        },
        "engine": {"tokens": eng_tokens, "seconds": round(eng_seconds, 2), "tok_per_s": round(eng_rate, 1)},
        "ratio": round(eng_rate / ref_rate, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
