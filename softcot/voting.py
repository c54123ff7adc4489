"""Self-consistency voting: one answer per example from its R (or K x R) extracted samples.

`reference` reproduces the paper's vote (docs/protocol.md §10, §14 row 16) so self-consistency numbers stay
comparable; `fixed` is the plain majority vote we recommend. Both break ties the same way: among the
answers with the largest count, the one seen first wins. Sample order is a deterministic function of
(seed, example), so the tie-break is reproducible.
"""

from __future__ import annotations

from collections import Counter

from softcot.errors import ConfigError

MODES = ("fixed", "reference")


def _first_seen_majority(counts: dict[str | None, int]) -> str | None:
    """The answer with the strictly largest count, scanning in first-seen order; None if no answers."""
    winner, best = None, 0
    for answer, count in counts.items():
        if count > best:
            winner, best = answer, count
    return winner


def _reference_counts(answers: list[str | None]) -> dict[str | None, int]:
    # The reference sets None's count to 1 each time None appears instead of adding 1, so None never
    # counts more than once, yet it keeps its first-seen place and can win a vote of unique answers.
    counts: dict[str | None, int] = {}
    for answer in answers:
        counts[answer] = 1 if answer is None else counts.get(answer, 0) + 1
    return counts


def vote(answers: list[str | None], mode: str = "fixed") -> str | None:
    """The majority answer; `fixed` ignores None (missing answers) and elects None only if all are None."""
    if mode == "reference":
        return _first_seen_majority(_reference_counts(answers))
    if mode == "fixed":
        # Counter keeps first-seen order, which the tie-break relies on.
        return _first_seen_majority(Counter(answer for answer in answers if answer is not None))
    raise ConfigError(f"eval.vote: unknown mode {mode!r} (expected one of {', '.join(MODES)})")
