"""The thought probe: what the soft thoughts carry, measured by teacher-forced likelihood.

For each held-out example the base model scores the gold target (rationale and answer, in the
training target format) under six conditions that differ only in the thought hint, and three more
per centred projector (softcot.probe.conditions). `own` against `shuffled` and `mean` separates
information about *this* question from a learned soft prompt. Forward passes only, no sampling.

    conditions the conditions, and the paired comparisons the table tests
    heldout    the held-out sets: the train split's validation tail, the fixed derangement
    scoring    one (pair, dataset, held-out set) -> per-example NLL under every condition (torch)
    table      per-example files -> reports/thought_probe.{md,csv,json,png}
    command    `softcot probe split|score|table`

Nothing is imported here, so that reading a table never loads torch.
"""
