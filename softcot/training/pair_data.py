"""A pair's training data: every example encoded for the base and the assistant, and the
assistant's states at its thought slots, computed once and cached on disk.

The assistant is frozen, so its slot states depend only on (assistant, prompt set, N, example):
SoftCoT's training (and the probe) compute them once, keep them for every epoch and cache them
(results/states/{assistant}/{prompt_set}/{dataset}/train-n{N}.safetensors) under metadata of what
they depend on; a cache whose metadata differs, or that cannot be read, is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from softcot.errors import DataError
from softcot.io import atomic_path
from softcot.prompts.placeholders import locate_assistant_slots
from softcot.prompts.render import PromptRenderer, TrainingSequence
from softcot.thoughts import assistant_states, right_pad


@dataclass(frozen=True)
class TrainingData:
    """Every training example encoded for both models, in file order."""

    example_ids: list[str]
    base: list[TrainingSequence]
    assistant_ids: list[list[int]]
    skipped: tuple[str, ...] = ()  # ids left out for being over train.max_length (policy `skip`)

    def __len__(self) -> int:
        return len(self.example_ids)


def encode_training_data(
    examples: Sequence[dict],
    base: PromptRenderer,
    assistant: PromptRenderer,
    n: int,
    drop_last_token: bool,
    max_length: int,
    source: str,
    overlong: str = "error",
) -> TrainingData:
    """Encode the base training sequences and the assistant prompts; `source` names the file in errors.

    A sequence over `max_length` is never cut: `overlong` says whether it is an error or skipped
    (and counted in the training record).
    """
    ids, base_sequences, assistant_ids, skipped = [], [], [], []
    for example in tqdm(examples, desc=f"encode {source}", unit="example", leave=False):
        sequence = base.training_sequence(example, n, drop_last_token)
        if len(sequence.ids) > max_length:
            if overlong == "skip":
                skipped.append(example["id"])
                continue
            raise DataError(
                f"{source}: example {example['id']!r} is {len(sequence.ids)} tokens long, over "
                f"train.max_length={max_length}; raise max_length or set train.overlong: skip "
                "(sequences are never cut)"
            )
        ids.append(example["id"])
        base_sequences.append(sequence)
        assistant_ids.append(assistant.assistant_ids(example, n))
    if not ids:
        raise DataError(f"{source}: every example is over train.max_length={max_length}")
    return TrainingData(ids, base_sequences, assistant_ids, tuple(skipped))


def compute_states(
    assistant: Any,
    data: TrainingData,
    indices: Sequence[int],
    n: int,
    batch_size: int,
    progress: str | None = None,
) -> torch.Tensor:
    """Assistant slot states [len(indices), N, H_a] on the CPU, batched by length to save padding;
    `progress` names a progress bar (None: no bar)."""
    order = sorted(range(len(indices)), key=lambda i: len(data.assistant_ids[indices[i]]))
    device = next(assistant.model.parameters()).device
    chunks: list[torch.Tensor] = []
    batches = range(0, len(order), batch_size)
    for begin in tqdm(batches, desc=progress, unit="batch", disable=progress is None):
        rows = [indices[i] for i in order[begin : begin + batch_size]]
        ids, mask = right_pad([data.assistant_ids[r] for r in rows], assistant.pad_id)
        starts = locate_assistant_slots(
            ids, mask, assistant.placeholder_ids, n, [data.example_ids[r] for r in rows]
        )
        chunks.append(assistant_states(assistant.model, ids.to(device), mask.to(device), starts, n).cpu())
    states = torch.cat(chunks)
    result = torch.empty_like(states)
    result[torch.tensor(order)] = states
    return result


def state_cache_metadata(
    assistant: Any, prompt_set_name: str, data: TrainingData, n: int, data_sha256: str
) -> dict:
    """What the cached states depend on; a cache whose metadata differs is recomputed."""
    inputs = hashlib.sha256(json.dumps(data.assistant_ids).encode()).hexdigest()
    spec = hashlib.sha256(json.dumps(assistant.spec.to_dict(), sort_keys=True).encode()).hexdigest()
    return {
        "assistant": assistant.spec.name,
        "assistant_spec_sha256": spec,
        "prompt_set": prompt_set_name,
        "num_thought_tokens": str(n),
        "data_sha256": data_sha256,
        "examples": str(len(data)),
        "inputs_sha256": inputs,
    }


def load_or_compute_states(
    path: Path, metadata: dict[str, str], compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """States from the cache file when its metadata matches, else computed and written there.

    An unreadable cache (truncated, garbage) is stale too: a warning names it, and it is replaced.
    """
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() == metadata:
                    # A copy in torch's own (64-byte aligned) memory: math kernels may round
                    # differently on the file's alignment, and a read-back must equal a computation.
                    return f.get_tensor("states").clone()
            print(f"softcot train: {path} was built from other inputs; recomputing it")
        except (SafetensorError, OSError) as exc:
            print(f"softcot train: warning: {path} is unreadable ({exc}); discarding it and recomputing it")
            path.unlink(missing_ok=True)
    states = compute()
    with atomic_path(path) as tmp:
        save_file({"states": states.contiguous()}, str(tmp), metadata=metadata)
    return states
