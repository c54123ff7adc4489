"""SoftCoT++ (protocol §12) and SoftCoT-P, its perturbation baseline: K soft-thought chains per
example, each answered R times, one vote over the K x R answers.

SoftCoT++ perturbs the assistant's *input*: K trainable "specialized initial tokens" [INI]; for
chain i every one of the N assistant slot embeddings is INI_i, so the assistant's states, and the
projected thoughts spliced into the base prompt, differ between chains. The K chains of an
example share everything else, the base prompt included.

- `softcot-pp-scaling` (the reference's `scaling`): artefact `ini-projector`, LM loss only.
- `softcot-pp` (the reference's `scaling-nce`): artefact `nce-projector`, LM loss plus the
  contrastive term that keeps the chains apart.
- `softcot-p`: SoftCoT's own projector, one chain whose projected thoughts get K independent
  Gaussian perturbations (the paper does not say which: see `perturb`).

The checkpoint holds the projection (`weight`, `bias`) and the K [INI] embeddings (`embedding`
[K, H_a]); SoftCoT and SoftCoT++ checkpoints are not interchangeable, and loading one as the
other is an error naming the file.

Training differs from the reference where the reference is broken (protocol §14 rows 18-21):
the contrastive term is computed per example, so any batch size trains; the [INI] embeddings
receive gradients (`train_ini: true`; `false` keeps them at their initial rows, as the
reference's `no_grad` + `detach` did); the LM loss over the K chains is summed (`sum`, the
reference) or averaged (`mean`), never scaled by the model's size. The K chains of a batch run
as one forward (softcot.chains); the loop is softcot.training.loop's.

The [INI] start from K rows of the assistant's embedding table (`ini_init: rows`, the paper) or
from the table's mean row plus seeded noise (`mean_noise`). Either way training first checks that
the K starts are distinct (relative to the table's median row norm) and records their distances:
equal rows, as Llama's never-trained reserved tokens may have, would give K identical chains, so
the default fails loudly instead of training them (protocol §12).

What is cached: with `train_ini: false` the assistant's chain states are fixed, so they are
computed once and cached on disk like SoftCoT's (results/states/.../train-n{N}-ini{row}x{K}, or
-ini-mean-noise-s{seed}x{K}); with trainable [INI] they change every step and nothing is cached
(only the shared prefix above).
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from softcot.chains import ScaledProjector, chain_hidden, chain_states, load_scaled_projector
from softcot.errors import ConfigError, ModelError
from softcot.evaluate import Job, Row
from softcot.io import sha256_file
from softcot.methods.base import Method, assistant_inputs, longest_assistant_prompt
from softcot.methods.softcot import (
    SoftCoT,
    ThoughtBatch,
    encode_pair_data,
    fit_projection,
    pair_record,
    states_path,
)
from softcot.methods.softcot_pp_ini import INI_INITS, initial_ini_embeddings
from softcot.prompts.placeholders import locate_assistant_slots, locate_base_slots
from softcot.thoughts import MASTER_DTYPES, base_embeddings, right_pad, splice_thoughts
from softcot.training.context import TrainingContext
from softcot.training.loop import LossShare, Step
from softcot.training.losses import check_frozen, supervised_loss_sum
from softcot.training.pair_data import TrainingData, load_or_compute_states, state_cache_metadata

CHAIN_LOSS_REDUCTIONS = ("sum", "mean")


# --- losses --------------------------------------------------------------------------------------
def chain_lm_loss_sum(
    model: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    starts: torch.Tensor,
    thoughts: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy over the supervised labels of every chain, their count).

    embeds/mask/labels [B, L] are one base sequence per example; thoughts [B, K, N, H_b] are
    spliced at starts. The LM head runs on supervised positions only (softcot.training.losses).
    """
    hidden, frozen = chain_hidden(model, embeds, mask, starts, thoughts)
    labels = labels.to(embeds.device).repeat_interleave(thoughts.shape[1], 0)
    check_frozen(labels, frozen)
    return supervised_loss_sum(model, hidden[:, :-1], labels[:, frozen + 1 :])


def contrastive_losses(
    thoughts: torch.Tensor, temperature: float, dropout: float, generator: torch.Generator
) -> torch.Tensor:
    """The contrastive term of protocol §12, one value per example: thoughts [B, K, N, H] -> [B].

    s_i is chain i's flattened projected thoughts, t_j = Dropout_p(s_j) (its positive view; the
    mask is drawn from `generator` on the CPU), logits_ij = cos(s_i, t_j) / temperature, and the
    loss is the cross-entropy of row i against target i, averaged over the K chains: the other
    chains' views are the negatives. Computed per example, so it is right for any batch size.
    """
    batch, chains = thoughts.shape[:2]
    s = thoughts.reshape(batch, chains, -1).float()
    keep = torch.rand(s.shape, generator=generator) >= dropout
    t = s * keep.to(s.device) / (1.0 - dropout)
    logits = F.normalize(s, dim=-1) @ F.normalize(t, dim=-1).transpose(1, 2) / temperature
    targets = torch.arange(chains, device=s.device).repeat(batch)
    return (
        F.cross_entropy(logits.reshape(batch * chains, chains), targets, reduction="none")
        .view(batch, chains)
        .mean(1)
    )


# --- training ------------------------------------------------------------------------------------
def compute_chain_states(
    assistant: Any, data: TrainingData, ini: torch.Tensor, n: int, batch_size: int, progress: str | None
) -> torch.Tensor:
    """Fixed [INI] (train_ini: false): every example's chain states [E, K, N, H_a] on the CPU."""
    order = sorted(range(len(data)), key=lambda i: len(data.assistant_ids[i]))
    device = next(assistant.model.parameters()).device
    chunks = []
    with torch.no_grad():
        for begin in tqdm(
            range(0, len(order), batch_size), desc=progress, unit="batch", disable=progress is None
        ):
            rows = order[begin : begin + batch_size]
            ids, mask = right_pad([data.assistant_ids[r] for r in rows], assistant.pad_id)
            starts = locate_assistant_slots(
                ids, mask, assistant.placeholder_ids, n, [data.example_ids[r] for r in rows]
            )
            states = chain_states(assistant.model, ids.to(device), mask.to(device), starts, n, ini.to(device))
            chunks.append(states.cpu())
    states = torch.cat(chunks)
    result = torch.empty_like(states)
    result[torch.tensor(order)] = states
    return result


def _assistant_batch(assistant: Any, data: TrainingData, indices: Sequence[int], n: int):
    ids, mask = right_pad([data.assistant_ids[i] for i in indices], assistant.pad_id)
    starts = locate_assistant_slots(
        ids, mask, assistant.placeholder_ids, n, [data.example_ids[i] for i in indices]
    )
    return ids, mask, starts


def step_loss(
    base: Any,
    assistant: Any,
    module: ScaledProjector,
    data: TrainingData,
    batch: ThoughtBatch,
    settings: dict[str, Any],
    contrastive: bool,
    cached: torch.Tensor | None,
    step: Step,
) -> LossShare:
    """One micro-batch's share of an optimizer step's loss, and its LM and contrastive parts.

    LM: the cross-entropy summed over every supervised token of every chain, divided by the step's
    supervised tokens (one chain's count): the sum over chains of each chain's mean loss
    (`chain_loss_reduction: sum`, the reference), or their mean (`mean`). Contrastive: sum over
    examples of each example's term, divided by K x the step's examples (protocol §12); its dropout
    masks come from the step's own generator.
    """
    n, chains = settings["num_thought_tokens"], module.chains
    device = next(base.model.parameters()).device
    if cached is not None:
        states = cached[batch.indices].to(device)
    else:
        ids, mask, starts = _assistant_batch(assistant, data, batch.indices, n)
        a_device = next(assistant.model.parameters()).device
        states = chain_states(
            assistant.model, ids.to(a_device), mask.to(a_device), starts, n, module.embedding
        )
    thoughts = module(states.to(device))  # [B, K, N, H_b] in the master dtype
    embeds = base_embeddings(base.model, batch.ids.to(device))
    lm_sum, _ = chain_lm_loss_sum(base.model, embeds, batch.mask, batch.labels, batch.starts, thoughts)
    lm = lm_sum / (step.tokens * (chains if settings["chain_loss_reduction"] == "mean" else 1))
    if not contrastive:
        return LossShare(lm, lm.item(), {"lm": lm.item(), "contrastive": 0.0})
    terms = contrastive_losses(
        thoughts,
        settings["contrastive_temperature"],
        settings["contrastive_dropout"],
        step.generator("contrastive"),
    )
    cl = terms.sum() / (chains * step.examples)
    total = lm + cl
    return LossShare(total, total.item(), {"lm": lm.item(), "contrastive": cl.item()})


def _check_settings(settings: dict[str, Any], contrastive: bool) -> None:
    if settings["chain_loss_reduction"] not in CHAIN_LOSS_REDUCTIONS:
        raise ConfigError(f"chain_loss_reduction must be one of {CHAIN_LOSS_REDUCTIONS}")
    if settings["ini_init"] not in INI_INITS:
        raise ConfigError(f"ini_init must be one of {INI_INITS}")
    if int(settings["num_scaling_times"]) < 1:
        raise ConfigError("num_scaling_times must be at least 1")
    if contrastive and int(settings["num_scaling_times"]) < 2:
        raise ConfigError("the contrastive term needs at least 2 chains (num_scaling_times >= 2)")


def train_scaled_projector(context: TrainingContext, contrastive: bool) -> dict[str, Any]:
    """Fit the projection and (train_ini) the [INI] embeddings on one dataset's training split,
    both models frozen; write the checkpoint and return the training record."""
    settings = context.settings
    _check_settings(settings, contrastive)
    n, chains = settings["num_thought_tokens"], int(settings["num_scaling_times"])
    data_sha256 = sha256_file(context.train_file)
    assistant, base = context.load_pair()
    first_row, rows, ini_record = initial_ini_embeddings(assistant, settings, context.models_dir)
    data, prompt_set = encode_pair_data(context, assistant, base)
    device = next(base.model.parameters()).device
    base_dim = base.model.get_input_embeddings().embedding_dim
    dtype = MASTER_DTYPES[settings["projection_master_dtype"]]
    module = ScaledProjector.initialised(rows, base_dim, settings["seed"], dtype).to(device)
    module.embedding.requires_grad_(bool(settings["train_ini"]))
    initial_ini = module.embedding.detach().clone()

    cache_metadata = None
    cached = None
    if not settings["train_ini"]:
        # The states depend on the [INI] rows: by first row, or by the seed of the mean_noise draw.
        ini_source = str(first_row) if first_row is not None else f"-mean-noise-s{settings['seed']}"
        cache_metadata = dict(
            state_cache_metadata(assistant, prompt_set.name, data, n, data_sha256),
            ini_first_row=str(first_row),
            chains=str(chains),
            ini_dtype=settings["projection_master_dtype"],
        )
        if first_row is None:
            cache_metadata.update(ini_init=settings["ini_init"], ini_seed=str(settings["seed"]))
        path = states_path(context, prompt_set.name, f"train-n{n}-ini{ini_source}x{chains}")
        cached = load_or_compute_states(
            path,
            cache_metadata,
            lambda: compute_chain_states(
                assistant, data, module.embedding.detach(), n, settings["batch_size"], f"chain states {path}"
            ),
        )

    record = pair_record(
        context,
        data,
        prompt_set,
        data_sha256,
        cache_metadata,
        num_scaling_times=chains,
        contrastive=contrastive,
        ini_first_row=first_row,
        ini_tokens=(
            None
            if first_row is None
            else assistant.tokenizer.convert_ids_to_tokens(list(range(first_row, first_row + chains)))
        ),
        **ini_record,
    )

    def loss(batch: ThoughtBatch, step: Step) -> LossShare:
        return step_loss(base, assistant, module, data, batch, settings, contrastive, cached, step)

    trained = {name: p for name, p in module.named_parameters() if p.requires_grad}
    losses, parts = fit_projection(context, base, data, module, trained, loss, record)
    record.update(
        losses,
        # This run's steps only (a resumed run has not seen the earlier ones' parts).
        step_lm_losses=parts.get("lm", []),
        step_contrastive_losses=parts.get("contrastive", []),
        ini_max_abs_change=float((module.embedding.detach() - initial_ini).abs().max()),
        assistant_dim=module.in_features,
        base_dim=module.out_features,
    )
    print(
        f"softcot train: wrote {context.checkpoint}; loss {record['first_step_loss']:.4f} -> "
        f"{record['last_step_loss']:.4f} over {record['steps']} steps, K = {chains}",
        file=sys.stderr,
    )
    return record


# --- the methods ---------------------------------------------------------------------------------
def _chains(job: Job) -> int:
    chains = int(job.settings["chains"])
    if chains < 1:
        raise ConfigError(f"method {job.method_name!r}: chains must be at least 1, got {chains}")
    return chains


def _row_chains(job: Job, rows: list[Row]) -> list[int]:
    """Each row's chain: its sample index s belongs to chain s // samples (softcot.records)."""
    samples = int(job.settings["samples"])
    return [r.sample // samples for r in rows]


class SoftCoTPP(Method):
    """SoftCoT++ trained with the contrastive term (the reference's `scaling-nce`)."""

    kind = "softcot-pp"
    contrastive = True

    def __init__(self) -> None:
        self.states: torch.Tensor | None = None  # [examples, chains, N, H_assistant]

    def load_artefact(self, job: Job, path: Path) -> None:
        module = load_scaled_projector(path, device=job.base.model.device)
        expected = [job.base.model.config.hidden_size, job.assistant.model.config.hidden_size]
        if list(module.weight.shape) != expected:
            raise ModelError(
                f"{path}: weight {list(module.weight.shape)} does not map {job.assistant.spec.name} to "
                f"{job.base.spec.name} (expected {expected})"
            )
        if _chains(job) > module.chains:
            raise ConfigError(
                f"method {job.method_name!r}: {_chains(job)} chains, but {path} holds only "
                f"{module.chains} [INI] embeddings (train it with num_scaling_times >= chains)"
            )
        job.artefact = module.requires_grad_(False)

    def base_prompts(self, job: Job) -> list[list[int]]:
        # The K chains share one base prompt; only their spliced thoughts differ.
        agp = bool(job.settings["add_generation_prompt"])
        return [job.base_renderer.base_ids(example, job.num_thoughts, agp) for example in job.examples]

    @torch.no_grad()
    def prepare(self, job: Job) -> None:
        """Every example's states for its first `chains` [INI] chains, once per job (no seed)."""
        n, chains = job.num_thoughts, _chains(job)
        device = job.assistant.model.device
        rows = job.batch_size or job.rows_per_batch(
            job.assistant, longest_assistant_prompt(job, n), 0, len(job.examples) * chains
        )
        chunk = max(1, rows // chains)
        ini = job.artefact.embedding[:chains]
        parts = []
        for lo in tqdm(range(0, len(job.examples), chunk), desc="soft thought chains", unit="batch"):
            ids, mask, starts = assistant_inputs(job, range(lo, min(lo + chunk, len(job.examples))), n)
            parts.append(
                chain_states(
                    job.assistant.model, ids.to(device), mask.to(device), starts, n, ini, share_prefix=False
                )
            )
        self.states = torch.cat(parts)

    @torch.no_grad()
    def input_embeddings(
        self, job: Job, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        example_ids = [job.examples[r.example]["id"] for r in rows]
        starts = locate_base_slots(ids, mask, job.base.placeholder_ids, job.num_thoughts, example_ids)
        states = self.states[[r.example for r in rows], _row_chains(job, rows)]
        return splice_thoughts(base_embeddings(job.base.model, ids), starts, job.artefact(states))

    def fingerprint_tensors(self, job: Job) -> list[torch.Tensor]:
        return list(job.artefact.state_dict().values())

    def train(self, context: TrainingContext) -> dict[str, Any]:
        return train_scaled_projector(context, contrastive=self.contrastive)


class SoftCoTPPScaling(SoftCoTPP):
    """SoftCoT++ without the contrastive term (the reference's `scaling`)."""

    kind = "softcot-pp-scaling"
    contrastive = False


def perturbation_generator(example_id: str, chain: int) -> torch.Generator:
    """SoftCoT-P's noise for one (example, chain). Like SoftCoT++'s [INI] chains, an example's K
    chains are the same for every seed: the seeds vary only the sampling (protocol §8)."""
    digest = hashlib.sha256(f"perturbation\x1f{example_id}\x1f{chain}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def perturb(thoughts: torch.Tensor, scale: float, generators: list[torch.Generator]) -> torch.Tensor:
    """thoughts [B, N, H] plus Gaussian noise: row b, token j gets sigma * ||t_bj|| / sqrt(H) * eps,
    eps ~ N(0, I) from generators[b], so the noise's expected norm is about sigma times the
    thought's own norm (sigma = `scale`). The SoftCoT++ paper does not state its perturbation;
    this form and sigma are this project's choice (`perturbation`)."""
    if scale == 0:
        return thoughts
    values = thoughts.float()
    eps = torch.stack([torch.randn(values.shape[1:], generator=g) for g in generators]).to(values.device)
    size = values.norm(dim=-1, keepdim=True) / math.sqrt(values.shape[-1])
    return (values + scale * size * eps).to(thoughts.dtype)


class SoftCoTP(SoftCoT):
    """SoftCoT-P: SoftCoT's projector, `chains` independently perturbed copies of each example's
    one chain of thoughts (noise drawn per (example, chain)), R samples each, one vote.
    With perturbation 0 it is SoftCoT with chains x samples samples."""

    kind = "softcot-p"

    @torch.no_grad()
    def input_embeddings(
        self, job: Job, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        example_ids = [job.examples[r.example]["id"] for r in rows]
        starts = locate_base_slots(ids, mask, job.base.placeholder_ids, job.num_thoughts, example_ids)
        thoughts = job.artefact(self.states[[r.example for r in rows]])
        generators = [
            perturbation_generator(example_id, chain)
            for example_id, chain in zip(example_ids, _row_chains(job, rows), strict=True)
        ]
        thoughts = perturb(thoughts, float(job.settings["perturbation"]), generators)
        return splice_thoughts(base_embeddings(job.base.model, ids), starts, thoughts)
