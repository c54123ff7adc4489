"""The one training loop. Every trained artefact (SoftCoT's projector, SoftCoT++'s two projectors,
the LoRA and Coconut adapters) is fitted by `fit`; a method supplies a `Recipe`: what it trains,
how it builds a micro-batch and its loss, and for Coconut when the optimizer starts afresh.

The loop owns what they share (protocol §7): AdamW with linear decay to 0 and no warm-up, a seeded
data order, gradient accumulation over micro-batches, clipping, the global generators seeded (LoRA
dropout draws from them), the state saved after every epoch so a killed run continues exactly
where it stopped (resume.pt beside the checkpoint, written atomically), a progress bar and the
per-step loss logged with dvclive ('train/loss').
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from softcot.io import atomic_path
from softcot.training.losses import supervised_tokens

RESUME_NAME = "resume.pt"


@dataclass
class Step:
    """What a micro-batch's loss may need to know about its optimizer step."""

    index: int  # steps done before this one (over the whole run, resumed or not)
    tokens: int  # supervised tokens of every micro-batch of the step
    examples: int  # examples of every micro-batch of the step
    seed: int
    _generators: dict[str, torch.Generator] = field(default_factory=dict)

    def generator(self, purpose: str) -> torch.Generator:
        """A CPU generator for this step's draws, one per purpose and shared by the step's
        micro-batches: a function of (purpose, seed, step) alone, so a resumed run draws what an
        uninterrupted one does."""
        if purpose not in self._generators:
            digest = hashlib.sha256(f"{purpose}\x1f{self.seed}\x1f{self.index}".encode()).digest()
            self._generators[purpose] = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
        return self._generators[purpose]


@dataclass(frozen=True)
class LossShare:
    """A micro-batch's share of its step's loss: what is back-propagated, what is logged, and named
    parts of the logged value (recorded per step, e.g. SoftCoT++'s LM and contrastive terms)."""

    value: torch.Tensor
    logged: float
    parts: Mapping[str, float] = field(default_factory=dict)


def token_mean(loss_sum: torch.Tensor, step: Step) -> LossShare:
    """A summed token loss as its share of the mean over the step's supervised tokens."""
    return LossShare(loss_sum / step.tokens, loss_sum.item() / step.tokens)


@dataclass(frozen=True)
class Recipe:
    """What a method trains and how; `fit` does the rest."""

    parameters: dict[str, torch.nn.Parameter]  # everything trained, by name
    examples: int
    batch: Callable[[int, list[int]], Any]  # (epoch, example indices) -> a micro-batch with `labels`
    loss: Callable[[Any, Step], LossShare]
    weight_decay: float = 0.0
    module: torch.nn.Module | None = None  # put in train mode while fitting (dropout), eval after
    reset_optimizer: Callable[[int], bool] = lambda epoch: False  # a fresh AdamW state before it


def optimizer_steps(order: list[int], batch_size: int, grad_accum: int) -> list[list[list[int]]]:
    """An epoch's optimizer steps, each a list of micro-batches of example indices."""
    micro = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]


def _optimizer_step(
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None,
) -> None:
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global generators seeded from `seed` inside, restored after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped (resume.pt)."""

    parameters: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # the data order
    device: torch.device
    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epochs_done: int = 0

    def snapshot(self) -> dict[str, Any]:
        """Everything `save` writes but the fingerprint, copied (what `restore` falls back to)."""
        return copy.deepcopy(
            {
                "epochs_done": self.epochs_done,
                "parameters": {name: p.detach().cpu() for name, p in self.parameters.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "rng": _rng_state(self.device),
                "step_losses": self.step_losses,
                "epoch_losses": self.epoch_losses,
            }
        )

    def save(self, path: Path, fingerprint: dict[str, Any]) -> None:
        with atomic_path(path) as tmp:
            torch.save({"fingerprint": fingerprint, **self.snapshot()}, tmp)

    def load(self, saved: Mapping[str, Any]) -> None:
        if set(saved["parameters"]) != set(self.parameters):
            raise KeyError("the trainable tensors differ")
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(saved["parameters"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"]["cpu"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng"]["cuda"], self.device)
        self.step_losses, self.epoch_losses = list(saved["step_losses"]), list(saved["epoch_losses"])
        self.epochs_done = int(saved["epochs_done"])

    def restore(self, path: Path, fingerprint: dict[str, Any]) -> bool:
        """Continue from `path` if it belongs to this run (same fingerprint). A file of another run
        is ignored; one that cannot be read is deleted with a warning; either way the run starts over."""
        if not path.exists():
            return False
        fresh = self.snapshot()
        try:
            # On the CPU: the generator states must stay there; the rest is copied to the device.
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["fingerprint"] != fingerprint:
                print(f"softcot train: {path} belongs to another run; starting over")
                return False
            self.load(saved)
        except Exception as exc:  # torch.load of arbitrary bytes can raise nearly any type
            self.load(fresh)
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"  # torch's run long
            print(f"softcot train: warning: {path} is unreadable ({reason}); starting over")
            path.unlink(missing_ok=True)
            return False
        print(f"softcot train: resuming {path.parent} after epoch {self.epochs_done}")
        return True


def fit(
    recipe: Recipe,
    settings: Mapping[str, Any],
    out_dir: Path,
    fingerprint: dict[str, Any],
    save: Callable[[], None],
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Train by `recipe` with the train settings (lr, batch_size, grad_accum, epochs,
    max_grad_norm, seed); call `save` to write the artefact, then drop the resume file. Returns (the
    training record's loss entries, each named loss part per step of this run: a resumed run has
    not seen the earlier steps' parts). `fingerprint` identifies the run (settings, models, data): a
    resume file of another run is ignored."""
    from dvclive import Live
    from tqdm import tqdm

    device = next(iter(recipe.parameters.values())).device
    seed = int(settings["seed"])
    steps_per_epoch = math.ceil(recipe.examples / (settings["batch_size"] * settings["grad_accum"]))
    total_steps = int(settings["epochs"]) * steps_per_epoch
    trainable = list(recipe.parameters.values())
    parts: dict[str, list[float]] = {}
    with seeded_rng(seed, device):
        optimizer = torch.optim.AdamW(
            trainable, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=recipe.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / total_steps)
        )
        state = TrainState(
            recipe.parameters, optimizer, scheduler, torch.Generator().manual_seed(seed), device
        )
        resume_path = out_dir / RESUME_NAME
        state.restore(resume_path, fingerprint)

        live = Live(dir=str(out_dir / "dvclive"), dvcyaml=False, save_dvc_exp=False)
        for loss in state.step_losses:  # replayed, so a resumed run logs what an uninterrupted one does
            live.log_metric("train/loss", loss)
            live.next_step()
        progress = tqdm(
            total=total_steps, initial=len(state.step_losses), desc=f"train {out_dir}", unit="step"
        )
        if recipe.module is not None:
            recipe.module.train()
        try:
            for epoch in range(state.epochs_done, int(settings["epochs"])):
                if recipe.reset_optimizer(epoch):
                    optimizer.state.clear()  # a fresh AdamW state; the schedule runs on
                order = torch.randperm(recipe.examples, generator=state.generator).tolist()
                epoch_start = len(state.step_losses)
                for micro in optimizer_steps(order, settings["batch_size"], settings["grad_accum"]):
                    batches = [recipe.batch(epoch, indices) for indices in micro]
                    step = Step(
                        index=len(state.step_losses),
                        tokens=sum(supervised_tokens(batch.labels) for batch in batches),
                        examples=sum(map(len, micro)),
                        seed=seed,
                    )
                    step_loss, step_parts = 0.0, {}
                    for batch in batches:
                        share = recipe.loss(batch, step)
                        share.value.backward()
                        step_loss += share.logged
                        for name, value in share.parts.items():
                            step_parts[name] = step_parts.get(name, 0.0) + value
                    _optimizer_step(trainable, optimizer, scheduler, settings["max_grad_norm"])
                    state.step_losses.append(step_loss)
                    for name, value in step_parts.items():
                        parts.setdefault(name, []).append(value)
                    live.log_metric("train/loss", step_loss)
                    live.next_step()
                    progress.update()
                    progress.set_postfix(loss=f"{step_loss:.4f}")
                losses = state.step_losses[epoch_start:]
                state.epoch_losses.append(sum(losses) / len(losses))
                state.epochs_done += 1
                state.save(resume_path, fingerprint)
        finally:
            if recipe.module is not None:
                recipe.module.eval()
            progress.close()
        live.end()
    save()
    resume_path.unlink(missing_ok=True)
    losses = {
        "steps": len(state.step_losses),
        "first_step_loss": state.step_losses[0],
        "last_step_loss": state.step_losses[-1],
        "epoch_losses": state.epoch_losses,
        "final_loss": state.epoch_losses[-1],
    }
    return losses, parts
