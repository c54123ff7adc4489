"""The paper preset's bill: evaluation and training throughput of the paper's models on this machine,
and the GPU-hours every paper table would take.

Each paper pair's models are built from their published shapes (softcot/models/registry.yaml
`architectures`: layers, hidden size, heads, KV heads, intermediate size, vocabulary) with random
weights, in bf16 on the GPU: nothing is downloaded. The evaluation engine then runs at the paper's
settings: the assistant's pass over its prompt, N = 4 soft thoughts projected and spliced into the
base prompt, 1,024 new tokens sampled with top-k 50 and no early stop (no stop token), for a few
batch sizes and the one `eval.batch_size: auto` picks here. A training step (forward and backward
through the frozen base to its input embeddings, batch 4) gives the training throughput.

The projection for every table of the paper preset (params.yaml, preset `paper`):

    evaluation GPU-hours = rows x expected new tokens per row / eval tokens per second / 3600
                           (rows = examples x seeds x samples; upper bound: every row runs 1,024 tokens)
    training GPU-hours   = epochs x examples x sequence tokens / train tokens per second / 3600

with the expected tokens per row and sequence tokens of `presets.paper.resources`. A table's total
counts each evaluation and projector it needs; the grand total counts shared ones once.

Without a GPU the same code runs on scaled-down stand-ins (2 layers, hidden 64, 16 new tokens, the
real vocabularies) so CI exercises it; those figures say nothing about a GPU.

    python benchmarks/gpu_eval.py [--batch-sizes 16 64 auto] [--new-tokens 1024] [--pairs llama qwen2.5]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from softcot.data.datasets import dataset_spec
from softcot.generate import SamplingConfig, generate, row_seed
from softcot.models.registry import architecture
from softcot.plan import Plan
from softcot.records import rows_per_seed
from softcot.resources import CPU_BATCH_SIZE, auto_batch_size, hf_config
from softcot.thoughts import Projector, assistant_states, base_embeddings, splice_thoughts

ROOT = Path(__file__).resolve().parent.parent
N_THOUGHTS = 4
SLOT_START = 8  # where the thought slot begins in the synthetic base prompt
# The CPU stand-in: the real vocabulary (the sampler's and the LM head's cost), everything else tiny.
SCALED_DOWN = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def build(name: str, device: torch.device, scaled: bool) -> torch.nn.Module:
    """A random-weight model of `name`'s published shape (bf16 on a GPU, float32 scaled down)."""
    config = hf_config(architecture(name), **(SCALED_DOWN if scaled else {}))
    dtype = torch.float32 if scaled else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def soft_inputs(
    base, assistant, projector, rows: int, prompt_tokens: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random prompts with the thoughts of the assistant's pass spliced in: what SoftCoT feeds the base."""
    generator = torch.Generator().manual_seed(rows)
    vocab_a, vocab_b = assistant.config.vocab_size, base.config.vocab_size
    a_ids = torch.randint(100, vocab_a, (rows, prompt_tokens), generator=generator).to(device)
    a_mask = torch.ones_like(a_ids)
    a_starts = torch.full((rows,), prompt_tokens - N_THOUGHTS - 1, device=device)
    states = assistant_states(assistant, a_ids, a_mask, a_starts, N_THOUGHTS)
    ids = torch.randint(100, vocab_b, (rows, prompt_tokens), generator=generator).to(device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        starts = torch.full((rows,), SLOT_START, device=device)
        embeds = splice_thoughts(base_embeddings(base, ids), starts, projector(states))
    return ids, mask, embeds


def eval_throughput(
    base, assistant, projector, rows: int, prompt_tokens: int, new_tokens: int, device
) -> dict:
    """Generated tokens per second of one batch of `rows` rows (no stop token: every row runs to the end)."""
    config = SamplingConfig(top_k=50, max_new_tokens=new_tokens)
    seeds = [row_seed(41, f"benchmark-{row}") for row in range(rows)]
    synchronize(device)
    start = time.perf_counter()
    ids, mask, embeds = soft_inputs(base, assistant, projector, rows, prompt_tokens, device)
    out = generate(base, ids, mask, seeds, config, stop_ids=[], pad_id=0, inputs_embeds=embeds)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = sum(row.num_tokens for row in out)
    return {"rows": rows, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def assistant_throughput(assistant, rows: int, prompt_tokens: int, device) -> float:
    """Prompt tokens per second of the assistant's single pass (SoftCoT's thoughts)."""
    ids = torch.randint(100, assistant.config.vocab_size, (rows, prompt_tokens)).to(device)
    starts = torch.full((rows,), prompt_tokens - N_THOUGHTS - 1, device=device)
    assistant_states(assistant, ids, torch.ones_like(ids), starts, N_THOUGHTS)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    assistant_states(assistant, ids, torch.ones_like(ids), starts, N_THOUGHTS)
    synchronize(device)
    return rows * prompt_tokens / (time.perf_counter() - start)


def train_throughput(base, batch: int, sequence_tokens: int, device, steps: int = 3) -> float:
    """Training tokens per second: forward and backward through the frozen base to its input
    embeddings, the LM head on the supervised half of each sequence (as softcot.training.losses does)."""
    ids = torch.randint(100, base.config.vocab_size, (batch, sequence_tokens)).to(device)
    supervised = sequence_tokens // 2

    def step() -> None:
        embeds = base_embeddings(base, ids).detach().requires_grad_(True)
        hidden = base.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        logits = base.lm_head(hidden[:, -supervised - 1 : -1]).float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, -supervised:].flatten())
        loss.backward()

    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch * sequence_tokens / (time.perf_counter() - start)


def measure_pair(plan: Plan, pair: str, args, device: torch.device, scaled: bool) -> dict:
    models = plan.config.pair(pair)
    assistant = build(models["assistant"], device, scaled)
    base = build(models["base"], device, scaled) if models["base"] != models["assistant"] else assistant
    projector = Projector(assistant.config.hidden_size, base.config.hidden_size).to(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        itemsize = next(base.parameters()).dtype.itemsize
        arch = architecture(models["base"])
        auto = auto_batch_size(arch, itemsize, args.prompt_tokens, args.new_tokens, free, total)
    else:
        auto = CPU_BATCH_SIZE
    sizes = sorted({auto if size == "auto" else int(size) for size in args.batch_sizes})
    warm_up(base, assistant, projector, min(sizes), device, args)
    runs = {
        (f"{size} (auto)" if size == auto else str(size)): eval_throughput(
            base, assistant, projector, size, args.prompt_tokens, args.new_tokens, device
        )
        for size in sizes
    }
    chosen = (
        next(run for key, run in runs.items() if key.endswith("(auto)"))
        if "auto" in args.batch_sizes
        else None
    )
    best = max(runs.values(), key=lambda run: run["tokens_per_s"])
    result = {
        "base": models["base"],
        "assistant": models["assistant"],
        "parameters_b": {
            role: round(architecture(name).parameters / 1e9, 3) for role, name in models.items()
        },
        "auto_batch_size": auto,
        "eval_by_batch_size": runs,
        "eval_tokens_per_s": (chosen or best)["tokens_per_s"],
        "assistant_tokens_per_s": round(
            assistant_throughput(assistant, min(sizes), args.prompt_tokens, device), 1
        ),
        "train_tokens_per_s": round(
            train_throughput(base, args.train_batch, args.sequence_tokens, device), 1
        ),
    }
    del base, assistant, projector
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def warm_up(base, assistant, projector, rows, device, args) -> None:
    """A short run first, so kernels and the allocator are ready before anything is timed."""
    eval_throughput(base, assistant, projector, rows, args.prompt_tokens, min(4, args.new_tokens), device)


def from_figures(plan: Plan) -> dict:
    """Every paper pair at the preset's sizing figures; the assistant's single pass at three times the
    training rate (a forward pass without the backward, of a smaller model: an upper bound on its cost)."""
    figures = plan.figures
    return {
        pair: {
            **models,
            "eval_tokens_per_s": figures.eval_tokens_per_s,
            "assistant_tokens_per_s": 3 * figures.train_tokens_per_s,
            "train_tokens_per_s": figures.train_tokens_per_s,
        }
        for pair, models in plan.config.pairs.items()
    }


# --- the bill ----------------------------------------------------------------------------------
def project(plan: Plan, measured: dict, args) -> tuple[dict, dict]:
    """GPU-hours of each table of the paper preset, and of all of them (shared work counted once)."""
    figures = plan.figures
    expected = args.expected_tokens or figures.expected_new_tokens

    def rate(pair: str, key: str) -> float:
        """A pair's measured figure, else that of a measured pair with the same base model."""
        if pair in measured:
            return measured[pair][key]
        base = plan.config.pair(pair)["base"]
        same = [m for m in measured.values() if m["base"] == base] or list(measured.values())
        return same[0][key]

    def cell_hours(pair: str, dataset: str, method: str) -> dict:
        step = plan.evaluate(pair, dataset, method)
        examples = plan.example_count(dataset, "test", step.settings["limit"])
        rows = examples * len(step.settings["seeds"]) * rows_per_seed(step.settings)
        per_s = rate(pair, "eval_tokens_per_s")
        extra = examples * int(step.settings.get("assist_hard_tokens", 0))  # Assist-CoT's hint tokens
        if "assistant" in step.settings["pair"]:
            extra += examples * args.prompt_tokens * per_s / rate(pair, "assistant_tokens_per_s")
        return {
            "rows": rows,
            "hours": (rows * expected + extra) / per_s / 3600,
            "hours_upper": (rows * int(step.settings["max_new_tokens"]) + extra) / per_s / 3600,
        }

    def artefact_hours(artefact: str, pair: str, dataset: str) -> float:
        step = plan.train(artefact, pair, dataset)
        examples = plan.example_count(dataset, "train", step.settings["limit"])
        tokens = int(step.settings["epochs"]) * examples * figures.sequence_tokens
        return tokens / rate(pair, "train_tokens_per_s") / 3600

    tables, all_cells, all_projectors = {}, {}, {}
    for name in plan.table_names():
        spec = plan.table_spec(name)
        cells, projectors = {}, {}
        for row in spec["rows"]:
            for dataset in spec["datasets"]:
                key = (row["pair"], dataset, row["method"])
                cells[key] = all_cells.setdefault(key, cell_hours(*key))
                artefact = plan.method(row["method"]).artefact
                if artefact is not None:
                    served = (artefact.name, row["pair"], dataset_spec(dataset).artefact_dataset)
                    projectors[served] = all_projectors.setdefault(served, artefact_hours(*served))
        tables[name] = summary(cells, projectors)
    return tables, summary(all_cells, all_projectors)


def summary(cells: dict, projectors: dict) -> dict:
    evaluation = sum(cell["hours"] for cell in cells.values())
    training = sum(projectors.values())
    return {
        "evaluations": len(cells),
        "rows": sum(cell["rows"] for cell in cells.values()),
        "projectors": len(projectors),
        "eval_gpu_hours": round(evaluation, 2),
        "eval_gpu_hours_upper": round(sum(cell["hours_upper"] for cell in cells.values()), 2),
        "train_gpu_hours": round(training, 2),
        "gpu_hours": round(evaluation + training, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--pairs", nargs="+", default=["llama", "qwen2.5"], help="paper pairs to measure")
    parser.add_argument(
        "--batch-sizes", nargs="+", default=None, help="rows per batch; `auto` is eval.batch_size: auto"
    )
    parser.add_argument("--new-tokens", type=int, default=None, help="default 1024 (16 scaled down)")
    parser.add_argument(
        "--prompt-tokens", type=int, default=None, help="default sequence_tokens (32 scaled down)"
    )
    parser.add_argument("--sequence-tokens", type=int, default=None, help="training sequence length")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument(
        "--expected-tokens", type=int, default=None, help="new tokens per row (default: resources figure)"
    )
    parser.add_argument("--scaled-down", action="store_true", help="the CPU stand-ins, even on a GPU")
    parser.add_argument(
        "--from-figures",
        action="store_true",
        help="measure nothing: project with presets.paper.resources' throughputs (the jobs' sizing)",
    )
    args = parser.parse_args(argv)

    plan = Plan.load(args.params, overrides={"preset": "paper"})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scaled = not args.from_figures and (args.scaled_down or device.type != "cuda")
    figures = plan.figures
    args.new_tokens = args.new_tokens or (16 if scaled else int(plan.config.preset_eval()["max_new_tokens"]))
    args.prompt_tokens = args.prompt_tokens or (32 if scaled else figures.sequence_tokens)
    args.sequence_tokens = args.sequence_tokens or (64 if scaled else figures.sequence_tokens)
    args.batch_sizes = args.batch_sizes or (["1", "4", "auto"] if scaled else ["16", "64", "auto"])
    torch.set_grad_enabled(True)

    if args.from_figures:
        measured, name = from_figures(plan), "none: presets.paper.resources figures"
    else:
        measured = {pair: measure_pair(plan, pair, args, device, scaled) for pair in args.pairs}
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tables, total = project(plan, measured, args)
    report = {
        "device": name
        + (" (scaled-down stand-ins: these figures say nothing about a GPU)" if scaled else ""),
        "scaled_down": scaled,
        "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "settings": {
            "num_thought_tokens": N_THOUGHTS,
            "new_tokens": args.new_tokens,
            "prompt_tokens": args.prompt_tokens,
            "early_stop": False,
            "top_k": 50,
            "expected_tokens_per_row": args.expected_tokens or figures.expected_new_tokens,
            "train_batch": args.train_batch,
            "train_sequence_tokens": args.sequence_tokens,
        },
        "pairs": measured,
        "tables": tables,
        "total": total,
    }
    print(json.dumps(report, indent=2))
    return 0 if all(math.isfinite(t["gpu_hours"]) for t in tables.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
