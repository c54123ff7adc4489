"""Self-consistency voting: the reference's quirks (docs/protocol.md §10) and the fixed majority vote."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from softcot.errors import ConfigError
from softcot.voting import vote


@pytest.mark.parametrize(
    ("answers", "reference", "fixed"),
    [
        # a clear majority: both modes agree
        (["18", "18", "7"], "18", "18"),
        (["7", "18", "18"], "18", "18"),
        (["18", "18", None, None, None], "18", "18"),
        ([None, "x", None, "y", None, "x"], "x", "x"),
        # ties: the answer seen first wins, in both modes
        (["a", "b", "b", "a"], "a", "a"),
        (["b", "a", "a", "b"], "b", "b"),
        (["c", "a", "b"], "c", "c"),
        # None's count is reset to 1 each time it appears, but it keeps its first-seen place
        ([None, "1", "2"], None, "1"),
        ([None, None, "1"], None, "1"),
        ([None, None, None, "1", "2", "3"], None, "1"),
        ([None, None, None, "1", "1"], "1", "1"),
        (["1", None, None, None], "1", "1"),
        # nothing to elect
        ([None, None], None, None),
        ([None], None, None),
        ([], None, None),
        (["yes"], "yes", "yes"),
    ],
)
def test_vote(answers: list[str | None], reference: str | None, fixed: str | None) -> None:
    assert vote(answers, mode="reference") == reference
    assert vote(answers, mode="fixed") == fixed


def test_fixed_is_the_default_mode() -> None:
    assert vote([None, "1", "2"]) == "1"


def test_fixed_vote_elects_a_most_common_answer_and_none_only_when_nothing_else() -> None:
    rng = random.Random(0)
    for _ in range(500):
        answers = [rng.choice([None, "1", "2", "3"]) for _ in range(rng.randint(0, 10))]
        winner = vote(answers, mode="fixed")
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            assert winner is None
            continue
        best = max(counts.values())
        tied = [a for a in answers if counts.get(a) == best]
        assert winner == tied[0]  # the first-seen of the tied answers


def test_reference_vote_counts_none_at_most_once() -> None:
    """Ten Nones and two votes for "1": a normal count would elect None, the reference elects "1"."""
    assert vote([None] * 10 + ["1", "1"], mode="reference") == "1"


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="eval.vote"):
        vote(["1"], mode="robust")
