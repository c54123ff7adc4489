"""SoftCoT (protocol §1, §7): the assistant's states at N placeholders, projected into the base
model's embedding space and spliced over the N placeholders of the base prompt's hint.

Evaluation computes each example's thoughts once (they do not depend on the seed); training fits
the projection with both models frozen (softcot.train holds the loop and its speed-ups).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from softcot.errors import ModelError
from softcot.methods.base import Artefact, Method, assistant_inputs, longest_assistant_prompt
from softcot.prompts import locate_base_slots
from softcot.thoughts import (
    assistant_states,
    base_embeddings,
    check_projector_file,
    load_projector,
    splice_thoughts,
)

if TYPE_CHECKING:
    from softcot.evaluate import Job, Row
    from softcot.train import TrainingContext


class SoftCoT(Method):
    kind = "softcot"
    uses_assistant = True
    artefact = Artefact("projector")
    extra_eval_keys = ("num_thought_tokens",)

    def __init__(self) -> None:
        self.states: torch.Tensor | None = None  # [examples, N, H_assistant]

    # --- evaluation ---------------------------------------------------------------------------
    def check_artefact(self, path: Path) -> None:
        check_projector_file(path)  # a corrupt projector fails before the models load

    def load_artefact(self, job: Job, path: Path) -> None:
        # A missing projector is an error, never a random projection (protocol §14 row 11).
        projector = load_projector(path, device=job.base.model.device)
        expected = [job.base.model.config.hidden_size, job.assistant.model.config.hidden_size]
        if list(projector.weight.shape) != expected:
            raise ModelError(
                f"{path}: weight {list(projector.weight.shape)} does not map "
                f"{job.assistant.spec.name} to {job.base.spec.name} (expected {expected})"
            )
        job.artefact = projector.requires_grad_(False)  # evaluation never trains it

    def base_prompts(self, job: Job) -> list[list[int]]:
        agp = bool(job.settings["add_generation_prompt"])
        return [job.base_renderer.base_ids(example, job.num_thoughts, agp) for example in job.examples]

    @torch.no_grad()
    def prepare(self, job: Job) -> None:
        """The assistant's states at its N slot positions for every example, computed once per job."""
        n = job.num_thoughts
        device = job.assistant.model.device
        chunk = job.batch_size or job.rows_per_batch(
            job.assistant, longest_assistant_prompt(job, n), 0, len(job.examples)
        )
        chunks = []
        for lo in tqdm(range(0, len(job.examples), chunk), desc="soft thoughts", unit="batch"):
            ids, mask, starts = assistant_inputs(job, range(lo, min(lo + chunk, len(job.examples))), n)
            chunks.append(assistant_states(job.assistant.model, ids.to(device), mask.to(device), starts, n))
        self.states = torch.cat(chunks)

    @torch.no_grad()
    def input_embeddings(
        self, job: Job, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        example_ids = [job.examples[r.example]["id"] for r in rows]
        starts = locate_base_slots(ids, mask, job.base.placeholder_ids, job.num_thoughts, example_ids)
        thoughts = job.artefact(self.states[[r.example for r in rows]])
        return splice_thoughts(base_embeddings(job.base.model, ids), starts, thoughts)

    def fingerprint_tensors(self, job: Job) -> list[torch.Tensor]:
        return list(job.artefact.state_dict().values())

    # --- training -----------------------------------------------------------------------------
    def train(self, context: TrainingContext) -> dict[str, Any]:
        from softcot.train import train_softcot_projector

        return train_softcot_projector(context)


METHODS = (SoftCoT,)
