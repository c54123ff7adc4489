"""The interface every method family implements, so the drivers never branch on a method's name.

What a method needs (the assistant? a trained artefact?) and which settings can change its outputs
is data, its entry in methods.yaml; its class says how it builds the base model's inputs for a
batch of evaluation rows (the engine's InputBuilder, softcot.evaluate), and a method that trains an
artefact says how: a Recipe for the one training loop (softcot.training.loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from softcot.evaluate import Job, Row
from softcot.prompts.placeholders import locate_assistant_slots
from softcot.thoughts import right_pad
from softcot.training.context import TrainingContext


class Method:
    """A method family's computation (its needs and settings are its catalog entry, methods.yaml).
    Subclasses set `kind` and override the hooks they need."""

    kind: ClassVar[str]

    # --- evaluation ---------------------------------------------------------------------------
    def check_artefact(self, path: Path) -> None:
        """A cheap check of the artefact file, run before any model loads (default: none)."""

    def load_artefact(self, job: Job, path: Path) -> None:
        """Load the trained artefact into `job` (only methods with an artefact)."""
        raise NotImplementedError(f"method {self.kind!r} has no trained artefact")

    def base_prompts(self, job: Job) -> list[list[int]]:
        """The base model's prompt ids per example."""
        raise NotImplementedError

    def prepare(self, job: Job) -> None:
        """Per-example work shared by every seed and sample (e.g. soft thoughts), done once."""

    def input_embeddings(
        self, job: Job, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """The base model's input embeddings for a left-padded batch; None: the plain token ids."""
        return None

    def fingerprint_tensors(self, job: Job) -> list[torch.Tensor]:
        """Tensors besides settings and prompts that decide the outputs (a resume must match them)."""
        return []

    # --- training -----------------------------------------------------------------------------
    def train(self, context: TrainingContext) -> dict[str, Any]:
        """Train the artefact and write its files; return the training record."""
        raise NotImplementedError(f"method {self.kind!r} trains nothing")


def longest_assistant_prompt(job: Job, n: int) -> int:
    """Tokens of the job's longest assistant prompt (sizes an automatic batch; 1 without examples)."""
    return max((len(job.assistant_renderer.assistant_ids(example, n)) for example in job.examples), default=1)


def assistant_inputs(
    job: Job, indices: Sequence[int], n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded assistant prompts of some examples and the start of each one's N x UNK slot."""
    sequences = [job.assistant_renderer.assistant_ids(job.examples[i], n) for i in indices]
    ids, mask = right_pad(sequences, job.assistant.pad_id)
    example_ids = [job.examples[i]["id"] for i in indices]
    starts = locate_assistant_slots(ids, mask, job.assistant.placeholder_ids, n, example_ids)
    return ids, mask, starts
