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
"""

# (key, label) in the table's order; `own` is what every other condition is tested against.
CONDITIONS = (
    ("no-hint", "No hint (Zero-Shot CoT prompt)"),
    ("unk", "Hint with UNK embeddings (CoT-UNK)"),
    ("untrained", "Untrained projector, own thoughts"),
    ("own", "Trained projector, own thoughts"),
    ("shuffled", "Trained projector, another example's thoughts"),
    ("mean", "Trained projector, mean training thoughts"),
)
REFERENCE = "own"
LABELS = dict(CONDITIONS)
