"""Find the thought slots in a batch of token ids, by id and with tensor operations.

The reference counts fixed offsets from the end of the sequence (protocol §4), which silently
misplaces the thoughts under another template or tokenizer. Here a slot is wherever its ids are,
and anything but exactly one run of exactly N placeholder tokens is an error naming the example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from softcot.errors import SoftCoTError


class PlaceholderError(SoftCoTError):
    """A prompt does not contain its thought slot exactly once, with exactly N tokens."""


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor; used only to explain an error."""
    runs: list[tuple[int, int]] = []
    for position, flag in enumerate(row.tolist()):
        if flag and (not runs or runs[-1][0] + runs[-1][1] != position):
            runs.append((position, 1))
        elif flag:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
    return runs


def _fail(rows: torch.Tensor, what: str, example_ids: Sequence[str], explain) -> None:
    bad = rows.nonzero().flatten().tolist()
    if bad:
        details = "; ".join(f"example {example_ids[i]!r}: {explain(i)}" for i in bad)
        raise PlaceholderError(f"{what}: {details}")


def find_unk_runs(
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    unk_id: int,
    n: int,
    example_ids: Sequence[str],
    what: str,
) -> torch.Tensor:
    """Start of the single run of `n` UNK ids in each row of `ids` [B, L]; returns [B] (long).

    Padding (attention_mask 0) never counts, even when the pad id is the UNK id (Qwen).
    """
    if ids.shape != attention_mask.shape or ids.dim() != 2 or len(example_ids) != ids.shape[0]:
        raise ValueError("ids and attention_mask must be [B, L] with one example id per row")
    is_unk = (ids == unk_id) & attention_mask.bool()
    previous = torch.nn.functional.pad(is_unk[:, :-1], (1, 0), value=False)
    run_starts = is_unk & ~previous
    n_runs = run_starts.sum(dim=1)
    n_unk = is_unk.sum(dim=1)

    def explain(i: int) -> str:
        runs = _runs(is_unk[i])
        lengths = ", ".join(f"{length} at {start}" for start, length in runs) or "none"
        return f"expected one run of {n} UNK tokens (id {unk_id}), found {len(runs)} run(s): {lengths}"

    _fail((n_runs != 1) | (n_unk != n), what, example_ids, explain)
    return run_starts.to(torch.int8).argmax(dim=1)


def _check_marker(
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    marker_id: int,
    expected_at: torch.Tensor,
    name: str,
    example_ids: Sequence[str],
    what: str,
    elsewhere: bool = False,
) -> None:
    """The marker occurs at `expected_at` [B], and (unless `elsewhere`) nowhere else."""
    is_marker = (ids == marker_id) & attention_mask.bool()
    count = is_marker.sum(dim=1) if not elsewhere else torch.ones_like(expected_at)
    in_range = (expected_at >= 0) & (expected_at < ids.shape[1])
    at_place = is_marker.gather(1, expected_at.clamp(0, ids.shape[1] - 1).unsqueeze(1)).squeeze(1) & in_range

    def explain(i: int) -> str:
        found = is_marker[i].nonzero().flatten().tolist()
        return (
            f"expected {name} (id {marker_id}) once, at position {int(expected_at[i])}; found it at {found}"
        )

    _fail((count != 1) | ~at_place, what, example_ids, explain)


def locate_base_slots(
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    placeholder_ids,
    n: int,
    example_ids: Sequence[str],
    with_markers: bool = True,
) -> torch.Tensor:
    """First UNK position of the base slot `BOT, N x UNK, EOT` in each row of `ids` [B, L] -> [B].

    `placeholder_ids` has integer fields `unk`, `bot`, `eot`. Without markers (the slot of an
    evaluation prompt may omit them) BOT and EOT must not occur at all. When the model's chat
    template writes BOT and EOT itself (`template_writes_markers`, Qwen3's <think></think>), they
    may also occur elsewhere; the slot is still unambiguous: the one run of N UNK, BOT right before
    it and EOT right after it.
    """
    elsewhere = bool(getattr(placeholder_ids, "template_writes_markers", False))
    starts = find_unk_runs(ids, attention_mask, placeholder_ids.unk, n, example_ids, "base prompt")
    for name, token_id, offset in (("BOT", placeholder_ids.bot, -1), ("EOT", placeholder_ids.eot, n)):
        if with_markers:
            _check_marker(
                ids, attention_mask, token_id, starts + offset, name, example_ids, "base prompt", elsewhere
            )
        elif not elsewhere:
            _check_absent(ids, attention_mask, token_id, name, example_ids, "base prompt")
    return starts


def _check_absent(ids, attention_mask, token_id: int, name: str, example_ids, what: str) -> None:
    present = ((ids == token_id) & attention_mask.bool()).any(dim=1)

    def explain(i: int) -> str:
        found = ((ids[i] == token_id) & attention_mask[i].bool()).nonzero().flatten().tolist()
        return f"{name} (id {token_id}) must not occur, found it at {found}"

    _fail(present, what, example_ids, explain)


def locate_assistant_slots(
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    placeholder_ids,
    n: int,
    example_ids: Sequence[str],
) -> torch.Tensor:
    """First UNK position of the assistant slot `N x UNK` in each row of `ids` [B, L] -> [B].

    The assistant side has no BOT/EOT (protocol §3), so finding either is an error too, except
    for a model whose chat template writes them itself (Qwen3's empty think block before the reply).
    """
    starts = find_unk_runs(ids, attention_mask, placeholder_ids.unk, n, example_ids, "assistant prompt")
    if not getattr(placeholder_ids, "template_writes_markers", False):
        for name, token_id in (("BOT", placeholder_ids.bot), ("EOT", placeholder_ids.eot)):
            _check_absent(ids, attention_mask, token_id, name, example_ids, "assistant prompt")
    return starts
