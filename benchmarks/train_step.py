"""Projector training step time: with and without the assistant-state cache and supervised-only logits.

Times full optimizer steps (assistant states, splice, base forward + backward, AdamW) of the tiny
pair (Gemma-3-270M assistant, SmolLM2-135M-Instruct base, materialized under results/models/)
on GSM8K training examples with N = 32, adding one optimisation at a time: the assistant-state
cache, supervised-only logits, and no autograd through the prompt before the thoughts (what
`softcot train` does). Prints one JSON object with the seconds per step of each configuration and
the speedup of all three over none. A benchmark, not a test:

    python benchmarks/train_step.py [--steps 2] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from softcot.data.schema import read_prepared
from softcot.methods.softcot import batch_loss, batch_thoughts, make_batch
from softcot.models import load_model
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.thoughts import Projector
from softcot.training.pair_data import compute_states, encode_training_data

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "results" / "models"
TRAIN_FILE = ROOT / "data" / "prepared" / "gsm8k" / "train.jsonl"
PAIR = ("gemma-3-270m", "smollm2-135m-instruct")
N = 32


CONFIGURATIONS = {  # name: (cached states, supervised-only logits, prompt without autograd)
    "baseline": (False, False, False),
    "+state_cache": (True, False, False),
    "+supervised_logits": (True, True, False),
    "+prompt_without_grad": (True, True, True),
}


def one_step(base, assistant, data, cached, flags: tuple[bool, bool, bool], projector, indices) -> float:
    """Seconds of one optimizer step with one configuration's optimisations."""
    use_cache, supervised_only, prompt_without_grad = flags
    optimizer = torch.optim.AdamW(projector.parameters(), lr=2e-5)
    start = time.perf_counter()
    batch = make_batch(base, data, indices, N)
    thoughts = batch_thoughts(assistant, data, indices, N, cached if use_cache else None)
    loss, count = batch_loss(base, projector, batch, thoughts, supervised_only, prompt_without_grad)
    (loss / count).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (one step per configuration each)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    missing = [name for name in PAIR if not (MODELS / name / "config.json").exists()]
    if missing or not TRAIN_FILE.exists():
        print(
            f"benchmarks/train_step.py: needs the tiny models {missing} under {MODELS} and {TRAIN_FILE}; "
            "build them with snakemake first",
            file=sys.stderr,
        )
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)

    assistant, base = (load_model(name, MODELS) for name in PAIR)
    prompt_set = load_prompt_set("paper")
    count = args.batch_size * (args.steps + 1)
    examples = read_prepared(TRAIN_FILE)[:count]
    data = encode_training_data(
        examples,
        PromptRenderer(prompt_set, base, "{letter}){text}"),
        PromptRenderer(prompt_set, assistant, "{letter}){text}"),
        N,
        drop_last_token=False,
        max_length=4096,
        source=str(TRAIN_FILE),
    )
    batches = [list(range(i, i + args.batch_size)) for i in range(0, count, args.batch_size)]

    start = time.perf_counter()
    cached = compute_states(assistant, data, range(len(data)), N, args.batch_size)
    cache_seconds = time.perf_counter() - start

    projector = Projector.seeded(640, 576, seed=0)
    one_step(base, assistant, data, cached, CONFIGURATIONS["baseline"], projector, batches[0])  # warm-up
    # Round robin over the configurations, so that load from other processes hits them alike;
    # the minimum over rounds is the least disturbed measurement.
    times: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for indices in batches[1:]:
        for name, flags in CONFIGURATIONS.items():
            times[name].append(one_step(base, assistant, data, cached, flags, projector, indices))
    results = {name: round(min(values), 3) for name, values in times.items()}
    baseline = results["baseline"]
    optimized = results["+prompt_without_grad"]
    report = {
        "pair": {"assistant": PAIR[0], "base": PAIR[1]},
        "num_thought_tokens": N,
        "batch_size": args.batch_size,
        "timed_rounds": args.steps,
        "mean_sequence_tokens": round(sum(len(s.ids) for s in data.base) / len(data), 1),
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step": results,
        "seconds_per_step_all_rounds": {
            name: [round(t, 3) for t in values] for name, values in times.items()
        },
        "state_cache_build_seconds_per_example": round(cache_seconds / len(data), 3),
        "baseline_seconds_per_step": baseline,
        "optimized_seconds_per_step": optimized,
        "speedup": round(baseline / optimized, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
