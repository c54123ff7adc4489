"""The probe's held-out sets: a train split's validation tail (for choosing the probe projector's
settings without the test split) and the derangement that gives each example another's thoughts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from softcot.errors import DataError


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of range(n) without a fixed point, fixed by `seed`: Sattolo's algorithm,
    which draws one n-cycle uniformly (numpy default_rng(seed)). Example i gets the thoughts of
    example result[i], never its own."""
    if n < 2:
        raise DataError(f"another example's thoughts need at least 2 held-out examples, got {n}")
    rng = np.random.default_rng(seed)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))  # 0 <= j < i: the swap never leaves i in place
        order[i], order[j] = order[j], order[i]
    return order


def split_train(examples: Sequence[dict], validation: int, source: str) -> tuple[list[dict], list[dict]]:
    """(fit, validation): the validation part is the last `validation` examples of a train split,
    so nothing the probe projector trains on is ever among them."""
    splits = {(e["dataset"], e["split"]) for e in examples}
    if any(split != "train" for _, split in splits):
        raise DataError(f"{source}: the probe splits a train split, got {sorted(splits)}")
    if len(examples) <= validation:
        raise DataError(
            f"{source}: {len(examples)} examples cannot give {validation} to probe.validation and "
            "train on the rest"
        )
    return list(examples[:-validation]), list(examples[-validation:])
