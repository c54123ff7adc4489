"""Coconut with LoRA (protocol §11; Hao et al. 2024, "Training Large Language Models to Reason in a
Continuous Latent Space"): the base model learns to reason in its own hidden space.

After the Zero-Shot CoT prompt come a begin marker, m latent positions and an end marker, then the
rest of the target. The input embedding of every latent position is the base model's last-layer
hidden state (after the final norm) at the position before it, so the latent positions are computed
one after another, each a forward pass over one position with the KV cache of everything before.

Training follows the curriculum of facebookresearch/coconut (args/gsm_coconut.yaml): at stage k the
first k rationale steps are replaced by k x `latent_per_step` latent positions; the stage advances
every `epochs_per_stage` epochs up to `max_latent_stage`, after which every rationale step is left
out (the latent positions stay at max_latent_stage x latent_per_step: Coconut's pad_latent_to_max).
The loss covers the remaining steps and the answer (never the prompt, the markers or the latent
positions); `reset_optimizer` starts every epoch with a fresh AdamW state, as Coconut does. LoRA (as in
softcot.methods.lora) and the two marker embeddings are trained; the gradient flows through the
latent positions. Evaluation: prompt, begin marker, max_latent_stage x latent_per_step latent
positions, end marker, then text sampled by the batched seeded engine.

The markers and latent positions are the base model's own placeholder tokens (BOT, UNK, EOT of the
model registry, the tokens of SoftCoT's thought slot): the latent ids are never embedded (the
hidden states replace them) and the markers' embeddings are trained vectors of their own, saved
beside the adapter (markers.safetensors), so the vocabulary is never resized.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from softcot.errors import ModelError
from softcot.evaluate import Job, Row
from softcot.generate import left_pad
from softcot.io import atomic_path
from softcot.methods.base import Method
from softcot.methods.lora import (
    Batch,
    cot_sequence,
    fit_adapter,
    keep_short_enough,
    merge_adapter,
    training_record,
)
from softcot.prompts.placeholders import locate_base_slots
from softcot.prompts.render import PromptRenderer
from softcot.prompts.sets import load_prompt_set
from softcot.thoughts import base_embeddings, splice_thoughts
from softcot.training.context import TrainingContext
from softcot.training.loop import LossShare, Step, token_mean
from softcot.training.losses import IGNORE, supervised_loss_sum

MARKERS_FILE = "markers.safetensors"  # the artefact's `markers` file (methods.yaml)


class Coconut(Method):
    kind = "coconut"

    def __init__(self) -> None:
        self.markers: Markers | None = None
        self.thoughts: torch.Tensor | None = None  # [examples, m, H]: each example's latent thoughts

    # --- evaluation ---------------------------------------------------------------------------
    def load_artefact(self, job: Job, path: Path) -> None:
        markers = load_markers(Path(path).parent / MARKERS_FILE)
        if markers.dim != job.base.model.config.hidden_size:
            raise ModelError(
                f"{Path(path).parent / MARKERS_FILE}: markers of size {markers.dim} do not fit "
                f"{job.base.spec.name} (hidden size {job.base.model.config.hidden_size})"
            )
        job.artefact = merge_adapter(job, path)
        self.markers = markers.to(next(job.base.model.parameters()).device).requires_grad_(False)

    def base_prompts(self, job: Job) -> list[list[int]]:
        """The Zero-Shot CoT prompt, then BOT, m x UNK (the latent positions) and EOT."""
        agp = bool(job.settings["add_generation_prompt"])
        marks = job.base.placeholder_ids
        span = [marks.bot] + [marks.unk] * self.markers.latents + [marks.eot]
        return [job.base_renderer.base_ids(example, 0, agp) + span for example in job.examples]

    @torch.no_grad()
    def prepare(self, job: Job) -> None:
        """Every example's latent thoughts, once per job (they depend on the example alone): the
        prompts up to the begin marker, left-padded in batches, then the latent passes."""
        m, model = self.markers.latents, job.base.model
        device = next(model.parameters()).device
        prefixes = [prompt[: len(prompt) - m - 1] for prompt in self.base_prompts(job)]
        chunk = job.batch_size or job.rows_per_batch(
            job.base, max(map(len, prefixes), default=1), m, len(prefixes)
        )
        chunks = []
        for lo in tqdm(range(0, len(prefixes), chunk), desc="latent thoughts", unit="batch"):
            ids, mask = left_pad(prefixes[lo : lo + chunk], job.base.pad_id)
            ids, mask = ids.to(device), mask.to(device)
            embeds = self.markers.splice_begin(base_embeddings(model, ids), ids.shape[1] - 1)
            mask = torch.cat([mask, mask.new_ones(len(ids), m)], dim=1)
            chunks.append(latent_passes(model, embeds, mask, m)[0])
        self.thoughts = torch.cat(chunks) if chunks else None

    @torch.no_grad()
    def input_embeddings(
        self, job: Job, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        m = self.markers.latents
        example_ids = [job.examples[r.example]["id"] for r in rows]
        starts = locate_base_slots(ids, mask, job.base.placeholder_ids, m, example_ids).to(ids.device)
        embeds = base_embeddings(job.base.model, ids)
        embeds = splice_thoughts(embeds, starts, self.thoughts[[r.example for r in rows]])
        rows_n = len(rows)
        embeds = splice_thoughts(embeds, starts - 1, self.markers.begin.expand(rows_n, 1, -1))
        return splice_thoughts(embeds, starts + m, self.markers.end.expand(rows_n, 1, -1))

    def fingerprint_tensors(self, job: Job) -> list[torch.Tensor]:
        return [job.artefact[name] for name in sorted(job.artefact)] + [self.markers.begin, self.markers.end]

    # --- training -----------------------------------------------------------------------------
    def train(self, context: TrainingContext) -> dict[str, Any]:
        return train_coconut(context)


# --- the markers -----------------------------------------------------------------------------------
class Markers(torch.nn.Module):
    """The trained input embeddings of the begin and end markers, [H] each (float32 master weights,
    cast to the model's dtype where spliced), and the number of latent positions at evaluation."""

    def __init__(self, begin: torch.Tensor, end: torch.Tensor, latents: int):
        super().__init__()
        self.begin = torch.nn.Parameter(begin.detach().float().clone())
        self.end = torch.nn.Parameter(end.detach().float().clone())
        self.latents = latents

    @property
    def dim(self) -> int:
        return self.begin.shape[-1]

    @classmethod
    def from_model(cls, base: Any, latents: int) -> Markers:
        """Initialised from the base's own embeddings of its BOT and EOT placeholder tokens."""
        table = base.model.get_input_embeddings().weight
        marks = base.placeholder_ids
        return cls(table[marks.bot], table[marks.eot], latents)

    def splice_begin(self, embeds: torch.Tensor, column: int) -> torch.Tensor:
        """`embeds` [B, L, H] with every row's `column` replaced by the begin marker (out of place)."""
        return self._splice(embeds, column, self.begin)

    def splice_end(self, embeds: torch.Tensor, column: int) -> torch.Tensor:
        return self._splice(embeds, column, self.end)

    @staticmethod
    def _splice(embeds: torch.Tensor, column: int, vector: torch.Tensor) -> torch.Tensor:
        marker = vector.to(embeds.dtype).expand(embeds.shape[0], 1, -1)
        return torch.cat([embeds[:, :column], marker, embeds[:, column + 1 :]], dim=1)


def save_markers(path: Path, markers: Markers) -> None:
    tensors = {
        "begin": markers.begin.detach().cpu().contiguous(),
        "end": markers.end.detach().cpu().contiguous(),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"latents": str(markers.latents)})


def load_markers(path: Path) -> Markers:
    if not path.is_file():
        raise ModelError(f"{path}: Coconut's marker embeddings not found (train the adapter first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not iterable)
        latents = int(metadata["latents"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable marker file ({exc}); delete it and train again") from exc
    if set(tensors) != {"begin", "end"} or tensors["begin"].shape != tensors["end"].shape:
        raise ModelError(f"{path}: expected the tensors begin and end of one size, found {sorted(tensors)}")
    return Markers(tensors["begin"], tensors["end"], latents)


# --- the latent passes -----------------------------------------------------------------------------
def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a padded batch: 0 at each row's first real token (padding anywhere)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def latent_passes(
    model: Any, embeds: torch.Tensor, mask: torch.Tensor, m: int
) -> tuple[torch.Tensor, list[torch.Tensor], Any]:
    """The m latent thoughts of a batch whose `embeds` [B, S, H] end just before the first latent
    position (the same column S in every row: left padding aligns them); `mask` [B, S + m + ...]
    covers the latent positions and anything after them.

    The first pass runs the S positions; each later pass runs one latent position, whose input is
    the previous pass's last hidden state, with the KV cache. Returns (thoughts [B, m, H], the hidden
    states of every position run so far, in order, and the cache). Autograd flows through everything
    unless the caller disables it.
    """
    start = embeds.shape[1]
    positions = positions_of(mask)
    out = model.base_model(
        inputs_embeds=embeds,
        attention_mask=mask[:, :start],
        position_ids=positions[:, :start],
        use_cache=True,
    )
    hiddens = [out.last_hidden_state]
    thoughts = [out.last_hidden_state[:, -1:]]
    cache = out.past_key_values
    for j in range(1, m):
        out = model.base_model(
            inputs_embeds=thoughts[-1],
            attention_mask=mask[:, : start + j],
            position_ids=positions[:, start + j - 1 : start + j],
            past_key_values=cache,
            use_cache=True,
        )
        hiddens.append(out.last_hidden_state)
        thoughts.append(out.last_hidden_state)
        cache = out.past_key_values
    return torch.cat(thoughts, dim=1), hiddens, cache


def coconut_hidden(
    model: Any, embeds: torch.Tensor, mask: torch.Tensor, start: int, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer hidden states [B, L, H] of a batch with m latent positions from column `start`, and
    the input embeddings with the latent thoughts in place (what the model actually read)."""
    if m == 0:
        hidden = model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_of(mask))
        return hidden.last_hidden_state, embeds
    thoughts, hiddens, cache = latent_passes(model, embeds[:, :start], mask, m)
    # The last latent position and everything after it, in one pass.
    rest = torch.cat([thoughts[:, -1:].to(embeds.dtype), embeds[:, start + m :]], dim=1)
    out = model.base_model(
        inputs_embeds=rest,
        attention_mask=mask,
        position_ids=positions_of(mask)[:, start + m - 1 :],
        past_key_values=cache,
        use_cache=True,
    )
    hidden = torch.cat([*hiddens, out.last_hidden_state], dim=1)
    filled = torch.cat([embeds[:, :start], thoughts.to(embeds.dtype), embeds[:, start + m :]], dim=1)
    return hidden, filled


# --- the curriculum --------------------------------------------------------------------------------
def stage_of(epoch: int, settings: Mapping[str, Any]) -> int:
    """The curriculum stage of an epoch: 0 .. max_latent_stage, then max_latent_stage + 1 (every
    rationale step latent)."""
    return min(epoch // int(settings["epochs_per_stage"]), int(settings["max_latent_stage"]) + 1)


def stage_layout(stage: int, steps: int, settings: Mapping[str, Any]) -> tuple[int, int]:
    """(rationale steps left out, latent positions) of an example with `steps` rationale steps."""
    top = int(settings["max_latent_stage"])
    skipped = steps if stage > top else min(stage, steps)
    return skipped, min(stage, top) * int(settings["latent_per_step"])


def resets_optimizer(epoch: int, settings: Mapping[str, Any]) -> bool:
    """Whether epoch `epoch` starts with a fresh AdamW state. With `reset_optimizer`,
    facebookresearch/coconut builds a new optimizer at the start of every epoch, not only when the
    stage changes; the learning-rate schedule runs on (this project's linear decay)."""
    return epoch > 0 and bool(settings["reset_optimizer"])


def eval_latents(settings: Mapping[str, Any]) -> int:
    """Latent positions at evaluation: max_latent_stage x latent_per_step."""
    return int(settings["max_latent_stage"]) * int(settings["latent_per_step"])


def coconut_batch(base: Any, sequences: list[tuple[list[int], list[int]]], m: int) -> Batch:
    """(prompt, continuation) pairs as prompt, BOT, m x UNK, EOT, continuation: the prompts with the
    begin marker left-padded so that the first latent position is one column for every row, the
    rest right-padded. Labels: the continuation only."""
    marks = base.placeholder_ids
    prefixes = [prompt + [marks.bot] for prompt, _ in sequences]
    suffixes = [[marks.unk] * m + [marks.eot] + rest for _, rest in sequences]
    start = max(map(len, prefixes))
    width = start + max(map(len, suffixes))
    ids = torch.full((len(sequences), width), base.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for row, (prefix, suffix) in enumerate(zip(prefixes, suffixes, strict=True)):
        begin, end = start - len(prefix), start + len(suffix)
        ids[row, begin:end] = torch.tensor(prefix + suffix)
        mask[row, begin:end] = 1
        labels[row, start + m + 1 : end] = torch.tensor(suffix[m + 1 :], dtype=torch.long)
    return Batch(ids, mask, labels, start=start, latents=m)


def batch_embeddings(model: Any, markers: Markers, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(the batch's input embeddings with both markers, its mask), on the model's device."""
    device = next(model.parameters()).device
    embeds = base_embeddings(model, batch.ids.to(device))
    embeds = markers.splice_begin(embeds, batch.start - 1)
    return markers.splice_end(embeds, batch.start + batch.latents), batch.mask.to(device)


def train_coconut(context: TrainingContext) -> dict[str, Any]:
    """Fit LoRA adapters and the marker embeddings by the Coconut curriculum; write the adapter, the
    markers and return the training record. The base's weights are untouched."""
    settings = context.settings
    base = context.load_base()
    prompt_set = load_prompt_set(settings["prompt_set"])
    renderer = PromptRenderer(prompt_set, base, settings["option_format"])
    drop_last = bool(settings["drop_last_train_token"])
    epochs = int(settings["epochs"])
    stages = sorted({stage_of(epoch, settings) for epoch in range(epochs)})
    examples = context.read_examples()

    # Every example at every stage trained: (prompt, continuation) with its first steps left out.
    by_stage = {
        example["id"]: {
            stage: cot_sequence(
                renderer, example, drop_last, stage_layout(stage, len(example["rationale"]), settings)[0]
            )
            for stage in stages
        }
        for example in examples
    }

    def longest(example: dict) -> int:  # over the stages trained: prompt, markers, latents, rest
        return max(
            sum(map(len, sequence)) + 2 + stage_layout(stage, 0, settings)[1]
            for stage, sequence in by_stage[example["id"]].items()
        )

    examples, skipped_ids = keep_short_enough(examples, longest, settings, str(context.train_file))
    encoded = {stage: [by_stage[e["id"]][stage] for e in examples] for stage in stages}
    record = training_record(context, base, prompt_set, skipped_ids)
    record.update(
        examples=len(examples),
        stages=[stage_of(epoch, settings) for epoch in range(epochs)],
        latents=eval_latents(settings),
    )
    m_of = {stage: stage_layout(stage, 0, settings)[1] for stage in stages}
    markers = Markers.from_model(base, eval_latents(settings)).to(next(base.model.parameters()).device)

    def loss(batch: Batch, step: Step) -> LossShare:
        embeds, mask = batch_embeddings(base.model, markers, batch)
        hidden, _ = coconut_hidden(base.model, embeds, mask, batch.start, batch.latents)
        targets = batch.labels[:, 1:].to(hidden.device)
        return token_mean(supervised_loss_sum(base.model, hidden[:, :-1], targets)[0], step)

    def batch(epoch: int, indices: list[int]) -> Batch:
        stage = stage_of(epoch, settings)
        return coconut_batch(base, [encoded[stage][i] for i in indices], m_of[stage])

    fit_adapter(
        context,
        base,
        record,
        len(examples),
        batch,
        loss,
        extra={f"markers.{n}": p for n, p in markers.named_parameters()},
        reset_optimizer=lambda epoch: resets_optimizer(epoch, settings),
        save_extra=lambda: save_markers(context.checkpoint.parent / MARKERS_FILE, markers),
    )
    print(
        f"softcot train: wrote {context.checkpoint}; loss {record['first_step_loss']:.4f} -> "
        f"{record['last_step_loss']:.4f} over {record['steps']} steps (stages {record['stages']})"
    )
    return record
