"""SoftCoT (protocol §1, §7): the assistant's states at N placeholders, projected into the base
model's embedding space and spliced over the N placeholders of the base prompt's hint.

Evaluation computes each example's thoughts once (they do not depend on the seed). Training fits
the projection alone, both models frozen (next-token loss on rationale and answer), with three
savings that leave the loss unchanged: the assistant's states are computed once and cached
(softcot.training.pair_data), the LM head runs on supervised positions only, and the prompt before
the thoughts runs without autograd (softcot.training.losses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm import tqdm

from softcot.errors import ModelError
from softcot.evaluate import Job, Row
from softcot.io import sha256_file
from softcot.methods.base import Method, assistant_inputs, longest_assistant_prompt
from softcot.prompts.placeholders import locate_base_slots
from softcot.prompts.render import PromptRenderer
from softcot.prompts.sets import load_prompt_set
from softcot.thoughts import (
    MASTER_DTYPES,
    Projector,
    assistant_states,
    base_embeddings,
    check_projector_file,
    load_projector,
    right_pad,
    save_projector,
    splice_thoughts,
)
from softcot.training.context import TrainingContext
from softcot.training.loop import LossShare, Recipe, Step, fit, token_mean
from softcot.training.losses import IGNORE, lm_loss_sum
from softcot.training.pair_data import (
    TrainingData,
    compute_states,
    encode_training_data,
    load_or_compute_states,
    state_cache_metadata,
)


class SoftCoT(Method):
    kind = "softcot"

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
        """Encode the training split for both models, get the assistant states (cached), fit the
        projection (AdamW, protocol §7) and return the training record."""
        settings = context.settings
        n = settings["num_thought_tokens"]
        data_sha256 = sha256_file(context.train_file)
        assistant, base = context.load_pair()
        data, prompt_set = encode_pair_data(context, assistant, base)
        metadata = state_cache_metadata(assistant, prompt_set.name, data, n, data_sha256)
        path = states_path(context, prompt_set.name, f"train-n{n}")
        states = load_or_compute_states(
            path,
            metadata,
            lambda: compute_states(
                assistant, data, range(len(data)), n, settings["batch_size"], f"assistant states {path}"
            ),
        )
        record = pair_record(context, data, prompt_set, data_sha256, metadata)
        projector = Projector.seeded(
            states.shape[-1],
            base.model.get_input_embeddings().embedding_dim,
            settings["seed"],
            MASTER_DTYPES[settings["projection_master_dtype"]],
            settings["projection_center"],
        ).to(next(base.model.parameters()).device)
        projector.fit_center(states)  # from every training state; the paper's `none` sets nothing

        def loss(batch: ThoughtBatch, step: Step) -> LossShare:
            thoughts = batch_thoughts(assistant, data, batch.indices, n, states)
            return token_mean(batch_loss(base, projector, batch, thoughts)[0], step)

        losses, _ = fit_projection(
            context, base, data, projector, dict(projector.named_parameters()), loss, record
        )
        record.update(losses, assistant_dim=projector.in_features, base_dim=projector.out_features)
        print(
            f"softcot train: wrote {context.checkpoint}; loss {record['first_step_loss']:.4f} -> "
            f"{record['last_step_loss']:.4f} over {record['steps']} steps"
        )
        return record


# --- training: what SoftCoT++ shares ---------------------------------------------------------------
def states_path(context: TrainingContext, prompt_set: str, name: str) -> Path:
    """Where the assistant's cached training states live: by assistant, prompt set and dataset."""
    directory = context.states_dir / context.settings["pair"]["assistant"] / prompt_set / context.dataset
    return directory / f"{name}.safetensors"


def pair_record(
    context: TrainingContext,
    data: TrainingData,
    prompt_set: Any,
    data_sha256: str,
    state_cache: dict[str, str] | None,
    **extra: Any,
) -> dict[str, Any]:
    """The training record's inputs part (what fingerprints a run: a resume file of other inputs is
    ignored); `extra` adds method-specific inputs."""
    settings = context.settings
    return {
        "pair": context.pair,
        "assistant": settings["pair"]["assistant"],
        "base": settings["pair"]["base"],
        "dataset": context.dataset,
        "num_thought_tokens": settings["num_thought_tokens"],
        **extra,
        "examples": len(data),
        "skipped_overlong": len(data.skipped),
        "skipped_overlong_ids": list(data.skipped),
        "data_sha256": data_sha256,
        "prompt_set": prompt_set.name,
        "prompt_set_sha256": prompt_set.sha256,
        "option_format": settings["option_format"],
        "settings": settings,
        "assistant_state_cache": state_cache,
        "versions": {"torch": str(torch.__version__), "transformers": transformers.__version__},
    }


def fit_projection(
    context: TrainingContext,
    base: Any,
    data: TrainingData,
    projector: Projector,
    trained: dict[str, torch.nn.Parameter],
    loss: Callable[[ThoughtBatch, Step], LossShare],
    record: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Fit `trained` (tensors of `projector`) on the pair's batches with the one loop and write the
    projector checkpoint; `record` fingerprints the run. Returns the loop's losses and parts."""
    recipe = Recipe(
        trained,
        len(data),
        lambda epoch, indices: make_batch(base, data, indices, context.settings["num_thought_tokens"]),
        loss,
    )
    return fit(
        recipe,
        context.settings,
        context.checkpoint.parent,
        fingerprint=record,
        save=lambda: save_projector(context.checkpoint, projector),
    )


# --- training batches and loss --------------------------------------------------------------------
def encode_pair_data(context: TrainingContext, assistant: Any, base: Any) -> tuple[TrainingData, Any]:
    """The context's training examples encoded for both models of the pair (N thought tokens), and
    the prompt set they were rendered with."""
    settings = context.settings
    prompt_set = load_prompt_set(settings["prompt_set"])
    data = encode_training_data(
        context.read_examples(),
        PromptRenderer(prompt_set, base, settings["option_format"]),
        PromptRenderer(prompt_set, assistant, settings["option_format"]),
        settings["num_thought_tokens"],
        settings["drop_last_train_token"],
        settings["max_length"],
        str(context.train_file),
        settings["overlong"],
    )
    return data, prompt_set


@dataclass
class ThoughtBatch:
    """Right-padded base sequences of some examples, their labels and base slot starts."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    starts: torch.Tensor
    indices: list[int]


def make_batch(base: Any, data: TrainingData, indices: Sequence[int], n: int) -> ThoughtBatch:
    sequences = [data.base[i] for i in indices]
    ids, mask = right_pad([s.ids for s in sequences], base.pad_id)
    labels = ids.masked_fill(mask == 0, IGNORE)
    for row, sequence in enumerate(sequences):
        labels[row, : sequence.supervised_from] = IGNORE
    starts = locate_base_slots(ids, mask, base.placeholder_ids, n, [data.example_ids[i] for i in indices])
    return ThoughtBatch(ids, mask, labels, starts, list(indices))


def batch_thoughts(
    assistant: Any, data: TrainingData, indices: Sequence[int], n: int, cached: torch.Tensor | None
) -> torch.Tensor:
    """The assistant slot states of these examples: from the cache, or by a forward pass now."""
    if cached is not None:
        return cached[list(indices)]
    return compute_states(assistant, data, indices, n, len(indices))


def batch_loss(
    base: Any,
    projector: Projector,
    batch: ThoughtBatch,
    thoughts: torch.Tensor,
    supervised_only: bool = True,
    prompt_without_grad: bool = True,
) -> tuple[torch.Tensor, int]:
    """Project the thoughts, splice them into the base embeddings and score the targets.

    The two switches exist for the equivalence tests and benchmarks/train_step.py; training
    always uses both.
    """
    device = next(base.model.parameters()).device
    embeds = base_embeddings(base.model, batch.ids.to(device))
    embeds = splice_thoughts(embeds, batch.starts.to(device), projector(thoughts.to(device)))
    frozen = int(batch.starts.min()) if prompt_without_grad else 0
    return lm_loss_sum(base.model, embeds, batch.mask, batch.labels, supervised_only, frozen)
