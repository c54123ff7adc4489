"""`softcot train`: the training driver, and the soft-thought projection training SoftCoT uses.

The driver resolves a train step and hands it to the method that owns the artefact
(softcot.methods). SoftCoT's training fits the projection on one dataset's training split.

Both models stay frozen; the only trainable tensors are the projector's `weight` and `bias`
(protocol §7). Three things keep this cheap without changing the result:
- the assistant's states at its slots depend only on (assistant, prompt set, N, example), so they
  are computed once, kept in memory for every epoch and cached on disk
  (results/states/{assistant}/{prompt_set}/{dataset}/train-n{N}.safetensors);
- the loss needs logits only where labels are supervised, so the decoder runs to its hidden
  states and the LM head is applied to the supervised positions alone;
- the prompt before the thoughts does not depend on the projection, so it runs without autograd
  and the backward pass stops at the slot.
A run writes its state after every epoch (resume.pt) and continues from there after a crash.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import torch
import torch.nn.functional as F
import transformers
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from softcot.config import SCHEMA_PATH
from softcot.data.datasets import dataset_spec
from softcot.data.schema import read_prepared
from softcot.errors import ConfigError, DataError
from softcot.io import atomic_path, sha256_file, write_json_atomic
from softcot.methods import method_class
from softcot.models.registry import add_local_path_argument
from softcot.plan import Plan, parse_settings
from softcot.prompts import (
    PromptRenderer,
    TrainingSequence,
    load_prompt_set,
    locate_assistant_slots,
    locate_base_slots,
)
from softcot.resources import add_threads_argument, set_torch_threads
from softcot.thoughts import (
    MASTER_DTYPES,
    Projector,
    assistant_states,
    base_embeddings,
    right_pad,
    save_projector,
    splice_thoughts,
)

IGNORE = -100
RESUME_NAME = "resume.pt"


# --- data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingData:
    """Every training example encoded for both models, in file order."""

    example_ids: list[str]
    base: list[TrainingSequence]
    assistant_ids: list[list[int]]
    skipped: tuple[str, ...] = ()  # ids left out for being over train.max_length (policy `skip`)

    def __len__(self) -> int:
        return len(self.example_ids)


def encode_training_data(
    examples: Sequence[dict],
    base: PromptRenderer,
    assistant: PromptRenderer,
    n: int,
    drop_last_token: bool,
    max_length: int,
    source: str,
    overlong: str = "error",
) -> TrainingData:
    """Encode the base training sequences and the assistant prompts; `source` names the file in errors.

    A sequence over `max_length` is never cut: `overlong` says whether it is an error or skipped
    (and counted in the training record).
    """
    ids, base_sequences, assistant_ids, skipped = [], [], [], []
    for example in tqdm(examples, desc=f"encode {source}", unit="example", leave=False):
        sequence = base.training_sequence(example, n, drop_last_token)
        if len(sequence.ids) > max_length:
            if overlong == "skip":
                skipped.append(example["id"])
                continue
            raise DataError(
                f"{source}: example {example['id']!r} is {len(sequence.ids)} tokens long, over "
                f"train.max_length={max_length}; raise max_length or set train.overlong: skip "
                "(sequences are never cut)"
            )
        ids.append(example["id"])
        base_sequences.append(sequence)
        assistant_ids.append(assistant.assistant_ids(example, n))
    if not ids:
        raise DataError(f"{source}: every example is over train.max_length={max_length}")
    return TrainingData(ids, base_sequences, assistant_ids, tuple(skipped))


def compute_states(
    assistant: Any,
    data: TrainingData,
    indices: Sequence[int],
    n: int,
    batch_size: int,
    progress: str | None = None,
) -> torch.Tensor:
    """Assistant slot states [len(indices), N, H_a] on the CPU, batched by length to save padding;
    `progress` names a progress bar (None: no bar)."""
    order = sorted(range(len(indices)), key=lambda i: len(data.assistant_ids[indices[i]]))
    device = next(assistant.model.parameters()).device
    chunks: list[torch.Tensor] = []
    batches = range(0, len(order), batch_size)
    for begin in tqdm(batches, desc=progress, unit="batch", disable=progress is None):
        rows = [indices[i] for i in order[begin : begin + batch_size]]
        ids, mask = right_pad([data.assistant_ids[r] for r in rows], assistant.pad_id)
        starts = locate_assistant_slots(
            ids, mask, assistant.placeholder_ids, n, [data.example_ids[r] for r in rows]
        )
        chunks.append(assistant_states(assistant.model, ids.to(device), mask.to(device), starts, n).cpu())
    states = torch.cat(chunks)
    result = torch.empty_like(states)
    result[torch.tensor(order)] = states
    return result


def state_cache_metadata(
    assistant: Any, prompt_set_name: str, data: TrainingData, n: int, data_sha256: str
) -> dict:
    """What the cached states depend on; a cache whose metadata differs is recomputed."""
    inputs = hashlib.sha256(json.dumps(data.assistant_ids).encode()).hexdigest()
    spec = hashlib.sha256(json.dumps(assistant.spec.to_dict(), sort_keys=True).encode()).hexdigest()
    return {
        "assistant": assistant.spec.name,
        "assistant_spec_sha256": spec,
        "prompt_set": prompt_set_name,
        "num_thought_tokens": str(n),
        "data_sha256": data_sha256,
        "examples": str(len(data)),
        "inputs_sha256": inputs,
    }


def load_or_compute_states(
    path: Path, metadata: dict[str, str], compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """States from the cache file when its metadata matches, else computed and written there.

    An unreadable cache (truncated, garbage) is stale too: a warning names it, and it is replaced.
    """
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() == metadata:
                    # A copy in torch's own (64-byte aligned) memory: math kernels may round
                    # differently on the file's alignment, and a read-back must equal a computation.
                    return f.get_tensor("states").clone()
            print(f"softcot train: {path} was built from other inputs; recomputing it")
        except (SafetensorError, OSError) as exc:
            print(f"softcot train: warning: {path} is unreadable ({exc}); discarding it and recomputing it")
            path.unlink(missing_ok=True)
    states = compute()
    with atomic_path(path) as tmp:
        save_file({"states": states.contiguous()}, str(tmp), metadata=metadata)
    return states


# --- loss ------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Right-padded base sequences of some examples, their labels and base slot starts."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    starts: torch.Tensor
    indices: list[int]


def make_batch(base: Any, data: TrainingData, indices: Sequence[int], n: int) -> Batch:
    sequences = [data.base[i] for i in indices]
    ids, mask = right_pad([s.ids for s in sequences], base.pad_id)
    labels = ids.masked_fill(mask == 0, IGNORE)
    for row, sequence in enumerate(sequences):
        labels[row, : sequence.supervised_from] = IGNORE
    starts = locate_base_slots(ids, mask, base.placeholder_ids, n, [data.example_ids[i] for i in indices])
    return Batch(ids, mask, labels, starts, list(indices))


def batch_thoughts(
    assistant: Any, data: TrainingData, indices: Sequence[int], n: int, cached: torch.Tensor | None
) -> torch.Tensor:
    """The assistant slot states of these examples: from the cache, or by a forward pass now."""
    if cached is not None:
        return cached[list(indices)]
    return compute_states(assistant, data, indices, n, len(indices))


def output_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on some hidden states, with the final soft-capping the model applies (Gemma 2)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def decoder_states(model: Any, embeds: torch.Tensor, mask: torch.Tensor, frozen: int) -> torch.Tensor:
    """Last-layer hidden states of positions frozen .. L-1 of `embeds` [B, L, H].

    The first `frozen` positions run without autograd: the prompt before the thoughts does not
    depend on the projection, so only its keys and values are needed, and the backward pass
    stops at the slot instead of crossing the whole prompt.
    """
    mask = mask.to(embeds.device)
    if frozen == 0:
        return model.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        prefix = model.base_model(
            inputs_embeds=embeds[:, :frozen], attention_mask=mask[:, :frozen], use_cache=True
        )
    return model.base_model(
        inputs_embeds=embeds[:, frozen:],
        attention_mask=mask,
        past_key_values=prefix.past_key_values,
        use_cache=True,
    ).last_hidden_state


def lm_loss_sum(
    model: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    supervised_only: bool = True,
    frozen: int = 0,
) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy over supervised labels, their count).

    supervised_only applies the LM head only where a label is supervised, instead of at every
    position; `frozen` leading positions run without autograd (see decoder_states) and must hold
    no supervised label. Both leave the loss unchanged.
    """
    labels = labels.to(embeds.device)
    if bool((labels[:, : frozen + 1] != IGNORE).any()):
        raise ValueError(
            f"supervised labels inside the first {frozen + 1} positions, which run without autograd"
        )
    hidden = decoder_states(model, embeds, mask, frozen)[:, :-1]
    targets = labels[:, frozen + 1 :]
    selected = targets != IGNORE
    if supervised_only:
        loss = F.cross_entropy(
            output_logits(model, hidden[selected]).float(), targets[selected], reduction="sum"
        )
    else:
        logits = output_logits(model, hidden).float()
        loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum")
    return loss, int(selected.sum())


def batch_loss(
    base: Any,
    projector: Projector,
    batch: Batch,
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


# --- training loop ---------------------------------------------------------------------------
def _steps(order: list[int], batch_size: int, grad_accum: int) -> list[list[list[int]]]:
    """An epoch's optimizer steps, each a list of micro-batches of example indices."""
    micro = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]


def _optimizer_step(projector: Projector, optimizer, scheduler, max_grad_norm: float | None) -> None:
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(projector.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped (saved as resume.pt)."""

    projector: Projector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    step_losses: list[float]
    epoch_losses: list[float]
    epochs_done: int = 0

    def save(self, path: Path, fingerprint: dict[str, Any]) -> None:
        state = {
            "fingerprint": fingerprint,
            "epochs_done": self.epochs_done,
            "projector": self.projector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "step_losses": self.step_losses,
            "epoch_losses": self.epoch_losses,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def restore(self, path: Path, fingerprint: dict[str, Any]) -> bool:
        """Load `path` if it belongs to this run (same fingerprint); say what happened.

        An unreadable file (truncated, garbage, missing entries) is stale too: a warning names it,
        it is deleted and the run starts over from this (untouched) fresh state.
        """
        if not path.exists():
            return False
        fresh = copy.deepcopy(
            (self.projector.state_dict(), self.optimizer.state_dict(), self.scheduler.state_dict())
        )
        fresh_generator = self.generator.get_state()
        try:
            # On the CPU: the generator state must stay there; the rest is copied to the device on load.
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["fingerprint"] != fingerprint:
                print(f"softcot train: {path} belongs to another run; starting over")
                return False
            self.projector.load_state_dict(saved["projector"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.generator.set_state(saved["generator"])
            step_losses, epoch_losses = list(saved["step_losses"]), list(saved["epoch_losses"])
            epochs_done = int(saved["epochs_done"])
        except Exception as exc:  # torch.load of arbitrary bytes can raise nearly any type
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"  # torch's run long
            print(f"softcot train: warning: {path} is unreadable ({reason}); starting over")
            self.projector.load_state_dict(fresh[0])
            self.optimizer.load_state_dict(fresh[1])
            self.scheduler.load_state_dict(fresh[2])
            self.generator.set_state(fresh_generator)
            path.unlink(missing_ok=True)
            return False
        self.step_losses, self.epoch_losses, self.epochs_done = step_losses, epoch_losses, epochs_done
        print(f"softcot train: resuming {path.parent} after epoch {self.epochs_done}")
        return True


def new_training_state(
    settings: dict[str, Any], assistant_dim: int, base_dim: int, total_steps: int, device: torch.device
) -> TrainingState:
    """Seeded projection, AdamW (protocol §7), linear decay to 0 without warm-up, seeded data order."""
    projector = Projector.seeded(
        assistant_dim, base_dim, settings["seed"], MASTER_DTYPES[settings["projection_master_dtype"]]
    ).to(device)
    optimizer = torch.optim.AdamW(
        projector.parameters(), lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total_steps))
    return TrainingState(
        projector, optimizer, scheduler, torch.Generator().manual_seed(settings["seed"]), [], []
    )


def train_projector(
    base: Any,
    assistant: Any,
    data: TrainingData,
    states: torch.Tensor,
    settings: dict[str, Any],
    checkpoint: Path,
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    """Train, saving resume.pt beside `checkpoint` after each epoch; write `checkpoint`; return the losses.

    `fingerprint` identifies the run (settings, models, data): a resume file from another run
    is ignored. The per-step loss goes to dvclive/ beside the checkpoint ('train/loss').
    """
    from dvclive import Live

    out_dir = checkpoint.parent

    n = settings["num_thought_tokens"]
    steps_per_epoch = math.ceil(len(data) / (settings["batch_size"] * settings["grad_accum"]))
    device = next(base.model.parameters()).device
    total_steps = settings["epochs"] * steps_per_epoch
    base_dim = base.model.get_input_embeddings().embedding_dim
    state = new_training_state(settings, states.shape[-1], base_dim, total_steps, device)
    resume_path = out_dir / RESUME_NAME
    state.restore(resume_path, fingerprint)

    live = Live(dir=str(out_dir / "dvclive"), dvcyaml=False, save_dvc_exp=False)
    for loss in state.step_losses:  # replayed, so a resumed run logs what an uninterrupted one does
        live.log_metric("train/loss", loss)
        live.next_step()
    progress = tqdm(total=total_steps, initial=len(state.step_losses), desc=f"train {out_dir}", unit="step")
    for _ in range(state.epochs_done, settings["epochs"]):
        order = torch.randperm(len(data), generator=state.generator).tolist()
        epoch_start = len(state.step_losses)
        for micro_batches in _steps(order, settings["batch_size"], settings["grad_accum"]):
            batches = [make_batch(base, data, indices, n) for indices in micro_batches]
            tokens = sum(int((b.labels[:, 1:] != IGNORE).sum()) for b in batches)
            step_loss = 0.0
            for batch in batches:
                thoughts = batch_thoughts(assistant, data, batch.indices, n, states)
                loss_sum, _ = batch_loss(base, state.projector, batch, thoughts)
                (loss_sum / tokens).backward()  # the mean over the step's supervised tokens
                step_loss += loss_sum.item() / tokens
            _optimizer_step(state.projector, state.optimizer, state.scheduler, settings["max_grad_norm"])
            state.step_losses.append(step_loss)
            live.log_metric("train/loss", step_loss)
            live.next_step()
            progress.update()
            progress.set_postfix(loss=f"{step_loss:.4f}")
        epoch = state.step_losses[epoch_start:]
        state.epoch_losses.append(sum(epoch) / len(epoch))
        state.epochs_done += 1
        state.save(resume_path, fingerprint)
    progress.close()
    live.end()

    save_projector(checkpoint, state.projector)
    resume_path.unlink(missing_ok=True)
    return {
        "steps": len(state.step_losses),
        "first_step_loss": state.step_losses[0],
        "last_step_loss": state.step_losses[-1],
        "epoch_losses": state.epoch_losses,
        "final_loss": state.epoch_losses[-1],
        "assistant_dim": state.projector.in_features,
        "base_dim": state.projector.out_features,
    }


# --- SoftCoT's training (softcot.methods.softcot calls it) ---------------------------------------
def train_softcot_projector(context: TrainingContext) -> dict[str, Any]:
    """Encode the training split for both models, get the assistant states (cached), fit the
    projection and return the training record."""
    settings = context.settings
    n = settings["num_thought_tokens"]
    examples = context.read_examples()
    data_sha256 = sha256_file(context.train_file)
    models = settings["pair"]
    assistant, base = context.load_pair()
    prompt_set = load_prompt_set(settings["prompt_set"])
    option_format = settings["option_format"]
    data = encode_training_data(
        examples,
        PromptRenderer(prompt_set, base, option_format),
        PromptRenderer(prompt_set, assistant, option_format),
        n,
        settings["drop_last_train_token"],
        settings["max_length"],
        str(context.train_file),
        settings["overlong"],
    )
    metadata = state_cache_metadata(assistant, prompt_set.name, data, n, data_sha256)
    states_path = (
        context.states_dir
        / models["assistant"]
        / prompt_set.name
        / context.dataset
        / f"train-n{n}.safetensors"
    )
    states = load_or_compute_states(
        states_path,
        metadata,
        lambda: compute_states(
            assistant, data, range(len(data)), n, settings["batch_size"], f"assistant states {states_path}"
        ),
    )
    record = {
        "pair": context.pair,
        "assistant": models["assistant"],
        "base": models["base"],
        "dataset": context.dataset,
        "num_thought_tokens": n,
        "examples": len(data),
        "skipped_overlong": len(data.skipped),
        "skipped_overlong_ids": list(data.skipped),
        "data_sha256": data_sha256,
        "prompt_set": prompt_set.name,
        "prompt_set_sha256": prompt_set.sha256,
        "option_format": option_format,
        "settings": settings,
        "assistant_state_cache": metadata,
        "versions": {"torch": str(torch.__version__), "transformers": transformers.__version__},
    }
    record.update(
        train_projector(base, assistant, data, states, settings, context.checkpoint, fingerprint=record)
    )
    print(
        f"softcot train: wrote {context.checkpoint}; loss {record['first_step_loss']:.4f} -> "
        f"{record['last_step_loss']:.4f} over {record['steps']} steps"
    )
    return record


# --- the training driver ---------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingContext:
    """What any method's training receives: the resolved step and where its files go."""

    pair: str
    dataset: str
    settings: dict[str, Any]  # the train step's settings (softcot.plan.Plan.train)
    train_file: Path
    models_dir: Path
    states_dir: Path  # caches a method may keep between runs (not outputs)
    checkpoint: Path
    record: Path
    local_paths: dict[str, str]  # models loaded from pre-downloaded directories

    def read_examples(self) -> list[dict]:
        """The prepared train split of the context's dataset, cut to `limit`."""
        examples = read_prepared(self.train_file)
        if (examples[0]["dataset"], examples[0]["split"]) != (self.dataset, "train"):
            raise DataError(
                f"{self.train_file}: holds {examples[0]['dataset']}/{examples[0]['split']}, "
                f"not {self.dataset}/train"
            )
        limit = self.settings["limit"]
        return examples if limit is None else examples[:limit]

    def load_pair(self) -> tuple[Any, Any]:
        """(assistant, base) of the step's pair, loaded once when they are the same model."""
        from softcot.models import load_model

        models = self.settings["pair"]
        assistant = load_model(models["assistant"], self.models_dir, local_paths=self.local_paths)
        if models["base"] == models["assistant"]:
            return assistant, assistant
        return assistant, load_model(models["base"], self.models_dir, local_paths=self.local_paths)


def validate_settings(settings: Any, origin: str) -> dict[str, Any]:
    """Check a train step's settings: the method, the pair, the option format, and every train key
    the method reads (its `train_keys`, by params.schema.yaml; nothing falls back silently)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{origin}: the train settings must be a JSON object")
    for key in ("kind", "pair", "option_format"):
        if key not in settings:
            raise ConfigError(f"{origin}: the train settings lack {key!r}")
    method = method_class(settings["kind"])
    roles = {"base", "assistant"} if method.uses_assistant else {"base"}
    if not isinstance(settings["pair"], dict) or set(settings["pair"]) != roles:
        raise ConfigError(f"{origin}: 'pair' must name the models {sorted(roles)}, got {settings['pair']!r}")
    defs = yaml.safe_load(SCHEMA_PATH.read_text())["$defs"]
    known = {**defs["train_settings"]["properties"], **defs["train_options"]["properties"]}
    keys = method.train_keys or list(defs["train_settings"]["properties"])  # the method's keys, no other
    section = {
        "type": "object",
        "$defs": defs,
        "additionalProperties": False,
        "required": sorted(keys),
        "properties": {**{key: known[key] for key in keys}, "kind": {}, "pair": {}, "option_format": {}},
    }
    errors = list(jsonschema.Draft202012Validator(section).iter_errors(settings))
    if errors:
        lines = [
            f"  train.{'.'.join(map(str, e.absolute_path)) or '<top level>'}: {e.message}" for e in errors
        ]
        raise ConfigError(f"{origin}: invalid train settings:\n" + "\n".join(lines))
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pair", required=True, help="model pair name (params.yaml presets.<preset>.pairs)")
    parser.add_argument("--dataset", required=True, help="dataset whose train split to fit")
    parser.add_argument(
        "--artefact", default="projector", help="what to train (default: %(default)s, SoftCoT's projection)"
    )
    parser.add_argument(
        "--settings",
        help="the step's settings as JSON (what `snakemake -n -p` shows); default: resolved from --params",
    )
    parser.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")
    parser.add_argument(
        "--train", required=True, help="prepared train file (data/prepared/DATASET/train.jsonl)"
    )
    parser.add_argument(
        "--models-dir", default="results/models", help="materialized models (default: %(default)s)"
    )
    parser.add_argument(
        "--states", default="results/states", help="assistant state cache (default: %(default)s)"
    )
    parser.add_argument("--checkpoint", required=True, help="the checkpoint file to write")
    parser.add_argument("--record", required=True, help="the training record (JSON) to write")
    add_threads_argument(parser)
    add_local_path_argument(parser)


def run(args: argparse.Namespace) -> int:
    from softcot.models.registry import parse_local_paths

    spec = dataset_spec(args.dataset)
    if not spec.trains:
        raise ConfigError(
            f"dataset {args.dataset!r} has no training set; it is evaluated with the "
            f"{spec.artefact_dataset} {args.artefact}"
        )
    if args.settings is None:
        settings = Plan.load(args.params).train(args.artefact, args.pair, args.dataset).settings
        settings = validate_settings(settings, args.params)
    else:
        settings = validate_settings(parse_settings(args.settings), "--settings")
    set_torch_threads(args.threads)
    context = TrainingContext(
        pair=args.pair,
        dataset=args.dataset,
        settings=settings,
        train_file=Path(args.train),
        models_dir=Path(args.models_dir),
        states_dir=Path(args.states),
        checkpoint=Path(args.checkpoint),
        record=Path(args.record),
        local_paths=parse_local_paths(args.local_path),
    )
    record = method_class(settings["kind"])().train(context)
    write_json_atomic(context.record, record)
    return 0
