"""The probe's conditions, shared by its scoring and its table.

no-hint    the Zero-Shot CoT prompt, without the hint
unk        the hint with the base model's own UNK embeddings in the slot (CoT-UNK)
untrained  the example's thoughts through the untrained projector (the probe projector's
           seeded initial weights)
own        the example's thoughts through the trained projector (SoftCoT)
shuffled   another example's thoughts through the trained projector (a fixed derangement of
           the held-out set)
mean       the trained projector's thoughts averaged over its training examples: one soft
           prompt for every question

Each centred projector (probe.centred: train.projection_center mean or standardize, trained like
the paper's projector) adds `own-<center>`, `shuffled-<center>` and `mean-<center>`: the same three
conditions through it.
"""

from __future__ import annotations

from collections.abc import Sequence

# (key, label) in the table's order; `own` is what every other of the six is tested against.
CONDITIONS = (
    ("no-hint", "No hint (Zero-Shot CoT prompt)"),
    ("unk", "Hint with UNK embeddings (CoT-UNK)"),
    ("untrained", "Untrained projector, own thoughts"),
    ("own", "Trained projector, own thoughts"),
    ("shuffled", "Trained projector, another example's thoughts"),
    ("mean", "Trained projector, mean training thoughts"),
)
REFERENCE = "own"
# The conditions each centred projector adds, and how its rows name it.
CENTRED_CONDITIONS = (
    ("own", "own thoughts"),
    ("shuffled", "another example's thoughts"),
    ("mean", "mean training thoughts"),
)
CENTER_NAMES = {"mean": "Mean-centred", "standardize": "Standardized"}


def centred_key(condition: str, center: str) -> str:
    """`own-standardize`: a condition of CENTRED_CONDITIONS through the `center` projector."""
    return f"{condition}-{center}"


def conditions(centred: Sequence[str]) -> list[tuple[str, str]]:
    """(key, label) of every condition in the table's order: the six, then three per centred
    projector (probe.centred, in its order)."""
    return list(CONDITIONS) + [
        (centred_key(key, center), f"{CENTER_NAMES[center]} projector, {label}")
        for center in centred
        for key, label in CENTRED_CONDITIONS
    ]


def comparisons(centred: Sequence[str]) -> list[tuple[str, str]]:
    """(reference, condition) of every paired test: the paper projector's own thoughts against each
    other of the six; each centred projector's own thoughts against its another example's and mean
    thoughts, and against no hint."""
    pairs = [(REFERENCE, key) for key, _ in CONDITIONS if key != REFERENCE]
    for center in centred:
        own = centred_key("own", center)
        pairs += [
            (own, centred_key("shuffled", center)),
            (own, centred_key("mean", center)),
            (own, "no-hint"),
        ]
    return pairs
