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
as one forward: the prompt before the slot is the same for every chain, so it runs once per
example without autograd and its keys and values are repeated K times.

What is cached: with `train_ini: false` the assistant's chain states are fixed, so they are
computed once and cached on disk like SoftCoT's (results/states/.../train-n{N}-ini{row}x{K});
with trainable [INI] they change every step and nothing is cached (only the shared prefix above).
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from softcot.errors import ConfigError, ModelError
from softcot.methods.base import Artefact, Method, assistant_inputs, longest_assistant_prompt
from softcot.methods.softcot import SoftCoT
from softcot.prompts import locate_base_slots
from softcot.thoughts import (
    FLOAT_DTYPES,
    MASTER_DTYPES,
    Projector,
    base_embeddings,
    right_pad,
    save_projector,
    splice_thoughts,
)

if TYPE_CHECKING:
    from softcot.evaluate import Job, Row
    from softcot.train import TrainingContext, TrainingData

CHAIN_LOSS_REDUCTIONS = ("sum", "mean")
# The train section's common keys SoftCoT++ reads, and the keys of its artefacts' own sections.
COMMON_TRAIN_KEYS = (
    "prompt_set",
    "num_thought_tokens",
    "lr",
    "batch_size",
    "grad_accum",
    "epochs",
    "max_grad_norm",
    "seed",
    "projection_master_dtype",
    "drop_last_train_token",
    "limit",
    "max_length",
    "overlong",
)
SCALING_TRAIN_KEYS = ("num_scaling_times", "train_ini", "chain_loss_reduction", "ini_rows")
CHECKPOINT_KEYS = ("bias", "embedding", "weight")


# --- the trainable tensors -----------------------------------------------------------------------
class ScaledProjector(Projector):
    """The projection Linear(H_a, H_b) plus K [INI] embeddings [K, H_a] (`embedding`, protocol §12).

    It projects like SoftCoT's Projector; `embedding` row i is what all N assistant slot
    embeddings of chain i are replaced with.
    """

    def __init__(self, assistant_dim: int, base_dim: int, chains: int, dtype: torch.dtype = torch.float32):
        super().__init__(assistant_dim, base_dim, dtype=dtype)
        self.embedding = nn.Parameter(torch.zeros(chains, assistant_dim, dtype=dtype))

    @property
    def chains(self) -> int:
        return self.embedding.shape[0]

    @classmethod
    def initialised(
        cls, ini_rows: torch.Tensor, base_dim: int, seed: int, dtype: torch.dtype
    ) -> ScaledProjector:
        """The projection drawn from `seed` exactly as SoftCoT's (Projector.seeded), the [INI]
        embeddings copied from `ini_rows` [K, H_a]."""
        chains, assistant_dim = ini_rows.shape
        linear = Projector.seeded(assistant_dim, base_dim, seed, dtype)
        module = cls(assistant_dim, base_dim, chains, dtype)
        with torch.no_grad():
            module.weight.copy_(linear.weight)
            module.bias.copy_(linear.bias)
            module.embedding.copy_(ini_rows.to(dtype))
        return module


def check_scaled_file(
    path: str | Path, assistant_dim: int | None = None, base_dim: int | None = None
) -> tuple[int, int, int]:
    """(H_a, H_b, K) of a SoftCoT++ checkpoint, from its header alone; anything else is a
    ModelError naming the file (a SoftCoT projector says so)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: SoftCoT++ checkpoint not found (train it first: softcot train)")
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
            shapes = {name: s.get_shape() for name, s in slices.items()}
            dtypes = {name: s.get_dtype() for name, s in slices.items()}
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"{path}: not a readable SoftCoT++ checkpoint ({exc}); delete it and train again"
        ) from exc
    if set(shapes) == {"weight", "bias"}:
        raise ModelError(
            f"{path}: a SoftCoT projector (no [INI] embeddings); SoftCoT++ needs its own checkpoint "
            "(artefact ini-projector or nce-projector), the two are not interchangeable"
        )
    if sorted(shapes) != list(CHECKPOINT_KEYS):
        raise ModelError(
            f"{path}: expected exactly the tensors {list(CHECKPOINT_KEYS)}, found {sorted(shapes)}"
        )
    if any(dtype not in FLOAT_DTYPES for dtype in dtypes.values()):
        raise ModelError(f"{path}: expected floating-point tensors, found {dtypes}")
    weight, bias, embedding = shapes["weight"], shapes["bias"], shapes["embedding"]
    if len(weight) != 2 or bias != [weight[0]] or len(embedding) != 2 or embedding[1] != weight[1]:
        raise ModelError(
            f"{path}: weight {weight}, bias {bias} and embedding {embedding} do not fit together"
        )
    expected = [base_dim or weight[0], assistant_dim or weight[1]]
    if weight != expected:
        raise ModelError(
            f"{path}: weight {weight} does not map the assistant's hidden size {expected[1]} to the "
            f"base's {expected[0]}; it was trained for another pair"
        )
    return weight[1], weight[0], embedding[0]


def load_scaled_projector(path: str | Path, device: torch.device | str | None = None) -> ScaledProjector:
    path = Path(path)
    assistant_dim, base_dim, chains = check_scaled_file(path)
    tensors = load_file(str(path))
    module = ScaledProjector(assistant_dim, base_dim, chains, dtype=tensors["weight"].dtype)
    module.load_state_dict(tensors)
    return module.to(device) if device is not None else module


# --- K chains in one forward ---------------------------------------------------------------------
def _gather_slots(hidden: torch.Tensor, starts: torch.Tensor, n: int) -> torch.Tensor:
    """hidden [R, L, H] at positions starts[r] .. starts[r] + n - 1 -> [R, n, H]."""
    positions = starts.to(hidden.device).unsqueeze(1) + torch.arange(n, device=hidden.device)
    return hidden.gather(1, positions.unsqueeze(2).expand(-1, -1, hidden.shape[-1]))


def chain_hidden(
    model: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    starts: torch.Tensor,
    inserts: torch.Tensor,
    share_prefix: bool = True,
) -> tuple[torch.Tensor, int]:
    """Last-layer states of K variants of each row of `embeds` [B, L, H] (right padded): variant k
    of row b has inserts[b, k] [n, H] written at starts[b] .. starts[b] + n - 1. Returns the
    states [B*K, L - f, H] of positions f .. L-1 (row b*K + k is variant k of row b) and f.

    With `share_prefix`, f = min(starts): positions 0 .. f-1 are the same in every variant, so
    they run once per row, without autograd, and their keys and values are repeated K times.
    Without it (f = 0) every variant runs whole, which gives the same states.
    """
    batch, chains, n, _ = inserts.shape
    device = embeds.device
    mask = mask.to(device)
    frozen = int(starts.min()) if share_prefix else 0
    chain_mask = mask.repeat_interleave(chains, 0)
    suffix = embeds[:, frozen:].repeat_interleave(chains, 0)
    chain_starts = (starts.to(device) - frozen).repeat_interleave(chains)
    suffix = splice_thoughts(suffix, chain_starts, inserts.reshape(batch * chains, n, -1))
    if frozen == 0:
        return model.base_model(
            inputs_embeds=suffix, attention_mask=chain_mask, use_cache=False
        ).last_hidden_state, 0
    with torch.no_grad():
        prefix = model.base_model(
            inputs_embeds=embeds[:, :frozen], attention_mask=mask[:, :frozen], use_cache=True
        )
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(chains)
    hidden = model.base_model(
        inputs_embeds=suffix, attention_mask=chain_mask, past_key_values=cache, use_cache=True
    ).last_hidden_state
    return hidden, frozen


def chain_states(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    starts: torch.Tensor,
    n: int,
    ini: torch.Tensor,
    share_prefix: bool = True,
) -> torch.Tensor:
    """The assistant's last-layer states at its N slot positions for each of the K chains: chain k
    has all N slot input embeddings replaced by ini[k] [H_a]. ids/mask [B, L] -> [B, K, N, H_a].
    Gradients reach `ini` when autograd is on (the assistant's weights stay frozen)."""
    embeds = model.get_input_embeddings()(ids)
    batch, chains = ids.shape[0], ini.shape[0]
    inserts = ini.to(embeds.device, embeds.dtype)[None, :, None, :].expand(batch, chains, n, embeds.shape[-1])
    hidden, frozen = chain_hidden(model, embeds, mask, starts, inserts, share_prefix)
    states = _gather_slots(hidden, (starts.to(hidden.device) - frozen).repeat_interleave(chains), n)
    return states.view(batch, chains, n, -1)


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
    spliced at starts. The LM head runs on supervised positions only (as softcot.train does).
    """
    from softcot.train import IGNORE, output_logits

    hidden, frozen = chain_hidden(model, embeds, mask, starts, thoughts)
    labels = labels.to(embeds.device).repeat_interleave(thoughts.shape[1], 0)
    if bool((labels[:, : frozen + 1] != IGNORE).any()):
        raise ValueError(
            f"supervised labels inside the first {frozen + 1} positions, which run without autograd"
        )
    targets = labels[:, frozen + 1 :]
    selected = targets != IGNORE
    logits = output_logits(model, hidden[:, :-1][selected]).float()
    return F.cross_entropy(logits, targets[selected], reduction="sum"), int(selected.sum())


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


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The dropout masks of one optimizer step: a function of (seed, step) alone, so a resumed run
    draws what an uninterrupted one does."""
    digest = hashlib.sha256(f"contrastive\x1f{seed}\x1f{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


# --- training ------------------------------------------------------------------------------------
def ini_rows(model: Any, settings: dict[str, Any]) -> tuple[int, torch.Tensor]:
    """(first row, the K rows [K, H_a]) that initialise the [INI] embeddings: consecutive rows of
    the assistant's input embeddings from `ini_rows[backbone]` on (protocol §12), as the embedding
    module outputs them (Gemma's scale included), in float32."""
    backbone, chains = model.spec.backbone, int(settings["num_scaling_times"])
    rows = settings["ini_rows"]
    if backbone not in rows:
        raise ConfigError(
            f"ini_rows has no first [INI] row for backbone {backbone!r} (assistant {model.spec.name}); "
            f"add one to the artefact's training section in params.yaml (known: {', '.join(sorted(rows))})"
        )
    first = int(rows[backbone])
    vocabulary = model.model.get_input_embeddings().num_embeddings
    if first < 0 or first + chains > vocabulary:
        raise ConfigError(
            f"ini_rows.{backbone}: rows {first} .. {first + chains - 1} are outside the vocabulary of "
            f"{model.spec.name} ({vocabulary} rows)"
        )
    with torch.no_grad():
        ids = torch.arange(first, first + chains, device=next(model.model.parameters()).device)
        return first, model.model.get_input_embeddings()(ids).float().cpu()


def compute_chain_states(
    assistant: Any, data: TrainingData, ini: torch.Tensor, n: int, batch_size: int, progress: str | None
) -> torch.Tensor:
    """Fixed [INI] (train_ini: false): every example's chain states [E, K, N, H_a] on the CPU."""
    from softcot.prompts import locate_assistant_slots

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
    from softcot.prompts import locate_assistant_slots

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
    batch: Any,
    settings: dict[str, Any],
    contrastive: bool,
    cached: torch.Tensor | None,
    tokens: int,
    examples: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float, float]:
    """One micro-batch's share of an optimizer step's loss, and its LM and contrastive parts.

    LM: the cross-entropy summed over every supervised token of every chain, divided by the step's
    supervised tokens (one chain's count): the sum over chains of each chain's mean loss
    (`chain_loss_reduction: sum`, the reference), or their mean (`mean`). Contrastive: sum over
    examples of each example's term, divided by K x the step's examples (protocol §12).
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
    lm = lm_sum / (tokens * (chains if settings["chain_loss_reduction"] == "mean" else 1))
    if not contrastive:
        return lm, lm.item(), 0.0
    terms = contrastive_losses(
        thoughts, settings["contrastive_temperature"], settings["contrastive_dropout"], generator
    )
    cl = terms.sum() / (chains * examples)
    return lm + cl, lm.item(), cl.item()


def _check_settings(settings: dict[str, Any], contrastive: bool) -> None:
    if settings["chain_loss_reduction"] not in CHAIN_LOSS_REDUCTIONS:
        raise ConfigError(f"chain_loss_reduction must be one of {CHAIN_LOSS_REDUCTIONS}")
    if int(settings["num_scaling_times"]) < 1:
        raise ConfigError("num_scaling_times must be at least 1")
    if contrastive and int(settings["num_scaling_times"]) < 2:
        raise ConfigError("the contrastive term needs at least 2 chains (num_scaling_times >= 2)")


def train_scaled_projector(context: TrainingContext, contrastive: bool) -> dict[str, Any]:
    """Fit the projection and (train_ini) the [INI] embeddings on one dataset's training split,
    both models frozen; write the checkpoint and return the training record."""
    from dvclive import Live

    import softcot.train as train
    from softcot.io import sha256_file
    from softcot.prompts import PromptRenderer, load_prompt_set

    settings = context.settings
    _check_settings(settings, contrastive)
    n, chains = settings["num_thought_tokens"], int(settings["num_scaling_times"])
    examples = context.read_examples()
    data_sha256 = sha256_file(context.train_file)
    models = settings["pair"]
    assistant, base = context.load_pair()
    prompt_set = load_prompt_set(settings["prompt_set"])
    data = train.encode_training_data(
        examples,
        PromptRenderer(prompt_set, base, settings["option_format"]),
        PromptRenderer(prompt_set, assistant, settings["option_format"]),
        n,
        settings["drop_last_train_token"],
        settings["max_length"],
        str(context.train_file),
        settings["overlong"],
    )
    first_row, rows = ini_rows(assistant, settings)
    device = next(base.model.parameters()).device
    base_dim = base.model.get_input_embeddings().embedding_dim
    dtype = MASTER_DTYPES[settings["projection_master_dtype"]]
    module = ScaledProjector.initialised(rows, base_dim, settings["seed"], dtype).to(device)
    module.embedding.requires_grad_(bool(settings["train_ini"]))
    initial_ini = module.embedding.detach().clone()

    cache_metadata = None
    cached = None
    if not settings["train_ini"]:
        cache_metadata = dict(
            train.state_cache_metadata(assistant, prompt_set.name, data, n, data_sha256),
            ini_first_row=str(first_row),
            chains=str(chains),
            ini_dtype=settings["projection_master_dtype"],
        )
        path = context.states_dir / models["assistant"] / prompt_set.name / context.dataset
        path = path / f"train-n{n}-ini{first_row}x{chains}.safetensors"
        cached = train.load_or_compute_states(
            path,
            cache_metadata,
            lambda: compute_chain_states(
                assistant, data, module.embedding.detach(), n, settings["batch_size"], f"chain states {path}"
            ),
        )

    record: dict[str, Any] = {
        "pair": context.pair,
        "assistant": models["assistant"],
        "base": models["base"],
        "dataset": context.dataset,
        "num_thought_tokens": n,
        "num_scaling_times": chains,
        "contrastive": contrastive,
        "ini_first_row": first_row,
        "ini_tokens": assistant.tokenizer.convert_ids_to_tokens(list(range(first_row, first_row + chains))),
        "examples": len(data),
        "skipped_overlong": len(data.skipped),
        "skipped_overlong_ids": list(data.skipped),
        "data_sha256": data_sha256,
        "prompt_set": prompt_set.name,
        "prompt_set_sha256": prompt_set.sha256,
        "option_format": settings["option_format"],
        "settings": settings,
        "assistant_state_cache": cache_metadata,
        "versions": {"torch": str(torch.__version__), "transformers": __import__("transformers").__version__},
    }

    steps_per_epoch = math.ceil(len(data) / (settings["batch_size"] * settings["grad_accum"]))
    total_steps = settings["epochs"] * steps_per_epoch
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total_steps))
    state = train.TrainingState(
        module, optimizer, scheduler, torch.Generator().manual_seed(settings["seed"]), [], []
    )
    out_dir = context.checkpoint.parent
    resume_path = out_dir / train.RESUME_NAME
    state.restore(resume_path, record)

    live = Live(dir=str(out_dir / "dvclive"), dvcyaml=False, save_dvc_exp=False)
    for loss in state.step_losses:
        live.log_metric("train/loss", loss)
        live.next_step()
    progress = tqdm(total=total_steps, initial=len(state.step_losses), desc=f"train {out_dir}", unit="step")
    parts: list[tuple[float, float]] = []
    for _ in range(state.epochs_done, settings["epochs"]):
        order = torch.randperm(len(data), generator=state.generator).tolist()
        epoch_start = len(state.step_losses)
        for micro_batches in _steps(order, settings["batch_size"], settings["grad_accum"]):
            batches = [train.make_batch(base, data, indices, n) for indices in micro_batches]
            tokens = sum(int((b.labels[:, 1:] != train.IGNORE).sum()) for b in batches)
            count = sum(len(b.indices) for b in batches)
            generator = _step_generator(settings["seed"], len(state.step_losses))
            total = lm_part = cl_part = 0.0
            for batch in batches:
                loss, lm, cl = step_loss(
                    base,
                    assistant,
                    module,
                    data,
                    batch,
                    settings,
                    contrastive,
                    cached,
                    tokens,
                    count,
                    generator,
                )
                loss.backward()
                total, lm_part, cl_part = total + loss.item(), lm_part + lm, cl_part + cl
            _optimizer_step(module, state.optimizer, state.scheduler, settings["max_grad_norm"])
            state.step_losses.append(total)
            parts.append((lm_part, cl_part))
            live.log_metric("train/loss", total)
            live.next_step()
            progress.update()
            progress.set_postfix(loss=f"{total:.4f}")
        epoch = state.step_losses[epoch_start:]
        state.epoch_losses.append(sum(epoch) / len(epoch))
        state.epochs_done += 1
        state.save(resume_path, record)
    progress.close()
    live.end()

    save_projector(context.checkpoint, module)
    resume_path.unlink(missing_ok=True)
    record.update(
        steps=len(state.step_losses),
        first_step_loss=state.step_losses[0],
        last_step_loss=state.step_losses[-1],
        epoch_losses=state.epoch_losses,
        final_loss=state.epoch_losses[-1],
        # This run's steps only (a resumed run has not seen the earlier ones' parts).
        step_lm_losses=[lm for lm, _ in parts],
        step_contrastive_losses=[cl for _, cl in parts],
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


def _steps(order: list[int], batch_size: int, grad_accum: int) -> list[list[list[int]]]:
    """An epoch's optimizer steps, each a list of micro-batches of example indices."""
    micro = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]


def _optimizer_step(module: nn.Module, optimizer, scheduler, max_grad_norm: float | None) -> None:
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


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
    uses_assistant = True
    artefact = Artefact("nce-projector")
    extra_eval_keys = ("num_thought_tokens", "chains")
    # The common train keys it reads, then its own (its section: train.nce-projector).
    train_keys = (*COMMON_TRAIN_KEYS, *SCALING_TRAIN_KEYS, "contrastive_temperature", "contrastive_dropout")
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
    artefact = Artefact("ini-projector")
    train_keys = (*COMMON_TRAIN_KEYS, *SCALING_TRAIN_KEYS)  # its section: train.ini-projector
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
    extra_eval_keys = ("num_thought_tokens", "chains", "perturbation")

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


METHODS = (SoftCoTPP, SoftCoTPPScaling, SoftCoTP)
