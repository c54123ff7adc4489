"""Why the thought probe's own, shuffled and mean thoughts score alike: how much of the soft thoughts
varies from question to question, at the assistant's layers and after the probe's projector.

For held-out examples it runs the assistant once per example (the paper prompt with N UNK slots)
and prints one JSON object: per assistant layer, the share of the slot states' energy that differs
between questions, 1 - ||mean state||^2 / mean ||state||^2 (0: every question gives the same states),
and the same share for the trained projector's thoughts, with the norms of its bias and of its
weight's contribution. Forward passes only. A diagnostic, not a test:

    python benchmarks/probe_states.py --examples results/probe/data/gsm8k/validation.jsonl \
        --projector results/probe/tiny-smol/gsm8k/center-none/projector.safetensors \
        --assistant smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from softcot.data.schema import read_prepared
from softcot.models import load_model
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots
from softcot.thoughts import load_projector

ROOT = Path(__file__).resolve().parent.parent


def varying_share(states: torch.Tensor) -> float:
    """1 - ||mean||^2 / mean ||x||^2 over the examples (dim 0) of [E, ...] states."""
    flat = states.flatten(1).double()
    return float(1 - flat.mean(0).square().sum() / flat.square().sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--projector", type=Path, required=True)
    parser.add_argument("--assistant", required=True, help="a materialized model's registry name")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "results" / "models")
    parser.add_argument("--n", type=int, default=4, help="thought tokens (the probe's N)")
    parser.add_argument("--limit", type=int, default=32)
    args = parser.parse_args()

    assistant = load_model(args.assistant, args.models_dir)
    renderer = PromptRenderer(load_prompt_set("paper"), assistant, None)
    layers: list[list[torch.Tensor]] = []
    for example in read_prepared(args.examples)[: args.limit]:
        ids = torch.tensor([renderer.assistant_ids(example, args.n)])
        start = int(
            locate_assistant_slots(
                ids, torch.ones_like(ids), assistant.placeholder_ids, args.n, [example["id"]]
            )[0]
        )
        with torch.no_grad():
            hidden = assistant.model.base_model(input_ids=ids, output_hidden_states=True).hidden_states
        layers.append([h[0, start : start + args.n] for h in hidden])
    per_layer = [torch.stack([example[i] for example in layers]) for i in range(len(layers[0]))]
    projector = load_projector(args.projector)
    with torch.no_grad():
        thoughts = projector(per_layer[-1])
        weight_part = thoughts - projector.bias
    print(
        json.dumps(
            {
                "examples": len(layers),
                "n": args.n,
                "assistant_varying_share_by_layer": [round(varying_share(s), 4) for s in per_layer],
                "projected_varying_share": round(varying_share(thoughts), 6),
                "projector_bias_norm": round(float(projector.bias.norm()), 4),
                "projector_weight_part_mean_norm": round(float(weight_part.norm(dim=-1).mean()), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
