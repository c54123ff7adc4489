"""LoRA fine-tuning (protocol §11): LoRA adapters (`peft`) on the base model, trained on the task's
chain-of-thought targets after the Zero-Shot CoT prompt, and evaluated with that prompt through the
adapted base.

The base model's own weights never change: training attaches the adapters, fits them (the base
frozen), saves the adapter tensors alone in peft's format and detaches them again; evaluation
merges them into the freshly loaded base (one matmul per layer saved at every step; every row of a
batch goes through the same merged weights, so batch invariance holds as for the other methods).

Also here, for Coconut (softcot.methods.coconut), which trains LoRA the same way: the adapter's
files, its training loop with resume, and the Zero-Shot CoT training sequence.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from softcot.errors import DataError, ModelError
from softcot.methods.base import Artefact, Method
from softcot.prompts import PromptRenderer, question_text

if TYPE_CHECKING:
    from softcot.evaluate import Job
    from softcot.train import TrainingContext

# The train keys LoRA fine-tuning reads: the common ones it uses (no thought tokens, no projection)
# and its own section's (train.lora in params.yaml).
LORA_TRAIN_KEYS = (
    "prompt_set",
    "lr",
    "batch_size",
    "grad_accum",
    "epochs",
    "max_grad_norm",
    "seed",
    "drop_last_train_token",
    "limit",
    "max_length",
    "overlong",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "weight_decay",
)
ADAPTER_FILE = "adapter_model.safetensors"  # peft's names: PeftModel.from_pretrained reads them
ADAPTER_CONFIG = "adapter_config.json"
RESUME_NAME = "resume.pt"


def adapter_artefact(name: str, *extra: tuple[str, str]) -> Artefact:
    """An adapter's files: results/adapters/{pair}/{dataset}/{name}/ holds peft's adapter tensors and
    config, the training record adapter.json and any `extra` (key, file name)."""
    return Artefact(
        name,
        directory="results/adapters/{pair}/{dataset}/{name}",
        checkpoint=ADAPTER_FILE,
        record="adapter.json",
        extra=(("config", ADAPTER_CONFIG), *extra),
    )


class LoRAFineTuning(Method):
    kind = "lora"
    artefact = adapter_artefact("lora")
    train_keys = LORA_TRAIN_KEYS

    def load_artefact(self, job: Job, path: Path) -> None:
        job.artefact = merge_adapter(job, path)

    def base_prompts(self, job: Job) -> list[list[int]]:
        agp = bool(job.settings["add_generation_prompt"])
        return [job.base_renderer.base_ids(example, 0, agp) for example in job.examples]

    def fingerprint_tensors(self, job: Job) -> list[torch.Tensor]:
        return [job.artefact[name] for name in sorted(job.artefact)]

    def train(self, context: TrainingContext) -> dict[str, Any]:
        return train_lora(context)


# --- the adapter's files ---------------------------------------------------------------------------
def lora_config(settings: Mapping[str, Any]) -> Any:
    """peft's LoraConfig from the train settings (no bias is trained, as in the reference code)."""
    from peft import LoraConfig

    return LoraConfig(
        r=int(settings["lora_r"]),
        lora_alpha=float(settings["lora_alpha"]),
        lora_dropout=float(settings["lora_dropout"]),
        target_modules=list(settings["lora_target_modules"]),
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model: torch.nn.Module, settings: Mapping[str, Any]) -> Any:
    """Wrap `model` in peft's LoRA (in place: its target layers gain adapters). lora_A is drawn on the
    CPU's generator from `settings["seed"]` (lora_B starts at zero, so the adapted model starts as
    the base), leaving the global generator untouched."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings["seed"]))
        peft_model = get_peft_model(model, lora_config(settings))
    return peft_model


def adapter_tensors(peft_model: Any) -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's checkpoint names (nothing of the base model)."""
    from peft import get_peft_model_state_dict

    return {name: t.detach().cpu().contiguous() for name, t in get_peft_model_state_dict(peft_model).items()}


def save_adapter(peft_model: Any, checkpoint: Path, base_name: str) -> None:
    """peft's adapter directory: `adapter_model.safetensors` (no metadata but peft's format tag, so
    equal tensors give equal bytes) and `adapter_config.json` beside it."""
    from safetensors.torch import save_file

    from softcot.io import atomic_path

    config = copy.deepcopy(peft_model.peft_config["default"])
    config.base_model_name_or_path = base_name  # the registry's name, not a machine's path
    config.inference_mode = True
    config.save_pretrained(str(checkpoint.parent))
    with atomic_path(checkpoint) as tmp:
        save_file(adapter_tensors(peft_model), str(tmp), metadata={"format": "pt"})


def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """An adapter checkpoint's tensors; anything unreadable is a ModelError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file() or not (path.parent / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{path}: adapter checkpoint or its {ADAPTER_CONFIG} not found (train it first)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"{path}: not a readable adapter checkpoint ({exc}); delete it and train again"
        ) from exc
    if not tensors or not all(".lora_A." in name or ".lora_B." in name for name in tensors):
        raise ModelError(f"{path}: expected LoRA tensors only, found {sorted(tensors)[:4]}")
    return tensors


def merge_adapter(job: Job, path: Path) -> dict[str, torch.Tensor]:
    """Merge the adapter at `path` into the job's base model (which this job owns) and return its
    tensors (they fingerprint the evaluation for resume)."""
    from peft import PeftModel

    path = Path(path)
    tensors = read_adapter(path)
    try:
        adapted = PeftModel.from_pretrained(job.base.model, str(path.parent), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{path}: does not fit base model {job.base.spec.name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    merged = adapted.merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    job.base = dataclasses.replace(job.base, model=merged)
    return tensors


# --- training data ---------------------------------------------------------------------------------
def cot_sequence(
    renderer: PromptRenderer, example: Mapping[str, Any], drop_last_token: bool, skip_steps: int = 0
) -> tuple[list[int], list[int]]:
    """(the Zero-Shot CoT prompt, what follows it in template([user: prompt, assistant: target])).

    The prompt is the evaluation's (no thought hint, no generation prompt), so the continuation is
    exactly what the model writes at evaluation: the assistant turn, header included. `skip_steps`
    leaves out the rationale's first steps (Coconut's stages; the remaining steps are numbered from
    1). `drop_last_token` is the reference's truncation where it happened (protocol §14 row 5).
    """
    dataset = example["dataset"]
    prompt_set = renderer.prompt_set
    question = question_text(example, renderer.option_format)
    shortened = dict(example, rationale=list(example["rationale"])[skip_steps:])
    target = prompt_set.target(dataset, shortened, question)
    user = prompt_set.base_content(dataset, question, None)
    prompt = renderer.base_ids(example, 0)
    ids = renderer.encode(renderer.conversation([("user", user), ("assistant", target)]))
    if ids[: len(prompt)] != prompt:
        raise DataError(
            f"example {example['id']!r}: the tokens of the prompt are not a prefix of the tokens of "
            f"prompt + target for model {renderer.spec.name!r}; the loss boundary would be ambiguous"
        )
    if drop_last_token and prompt_set.family(dataset).reference_drops_last_token:
        ids = ids[:-1]
    return prompt, ids[len(prompt) :]


def keep_short_enough(
    examples: list[dict], lengths: Callable[[dict], int], settings: Mapping[str, Any], source: str
) -> tuple[list[dict], list[str]]:
    """The examples whose training sequences fit train.max_length, and the ids left out (policy
    `skip`); with policy `error` an overlong one is an error naming it. Sequences are never cut."""
    max_length, kept, skipped = int(settings["max_length"]), [], []
    for example in examples:
        length = lengths(example)
        if length <= max_length:
            kept.append(example)
        elif settings["overlong"] == "skip":
            skipped.append(example["id"])
        else:
            raise DataError(
                f"{source}: example {example['id']!r} is {length} tokens long, over "
                f"train.max_length={max_length}; raise max_length or set train.overlong: skip "
                "(sequences are never cut)"
            )
    if not kept:
        raise DataError(f"{source}: every example is over train.max_length={max_length}")
    return kept, skipped


@dataclass
class Batch:
    """Token ids, attention mask and labels of some training examples (IGNORE = unsupervised)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    start: int = 0  # Coconut: the column of the first latent position (every row aligned there)
    latents: int = 0  # Coconut: latent positions from `start`

    @property
    def tokens(self) -> int:
        """Supervised next-token targets."""
        from softcot.train import IGNORE

        return int((self.labels[:, 1:] != IGNORE).sum())


def lora_batch(base: Any, sequences: Sequence[tuple[list[int], list[int]]]) -> Batch:
    """(prompt, continuation) pairs right-padded, the loss on the continuations."""
    from softcot.thoughts import right_pad
    from softcot.train import IGNORE

    ids, mask = right_pad([prompt + rest for prompt, rest in sequences], base.pad_id)
    labels = ids.masked_fill(mask == 0, IGNORE)
    for row, (prompt, _) in enumerate(sequences):
        labels[row, : len(prompt)] = IGNORE
    return Batch(ids, mask, labels)


# --- the training loop -----------------------------------------------------------------------------
@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global generators (LoRA dropout draws from them) seeded from `seed` inside, restored after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class FitState:
    """Everything a fine-tuning run needs to continue exactly where it stopped (resume.pt)."""

    parameters: dict[str, torch.nn.Parameter]  # the trainable tensors, by name
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # the data order
    device: torch.device
    step_losses: list[float]
    epoch_losses: list[float]
    epochs_done: int = 0

    def save(self, path: Path, fingerprint: dict[str, Any]) -> None:
        from softcot.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save({"fingerprint": fingerprint, **self.snapshot()}, tmp)

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

    def load(self, saved: Mapping[str, Any]) -> None:
        if set(saved["parameters"]) != set(self.parameters):
            raise KeyError("the trainable tensors differ")
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(saved["parameters"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        _set_rng_state(saved["rng"], self.device)
        self.step_losses, self.epoch_losses = list(saved["step_losses"]), list(saved["epoch_losses"])
        self.epochs_done = int(saved["epochs_done"])

    def restore(self, path: Path, fingerprint: dict[str, Any]) -> bool:
        """Continue from `path` if it belongs to this run (same fingerprint). A file of another run
        is ignored; one that cannot be read is deleted with a warning; either way the run starts over."""
        if not path.exists():
            return False
        fresh = self.snapshot()
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["fingerprint"] != fingerprint:
                print(f"softcot train: {path} belongs to another run; starting over")
                return False
            self.load(saved)
        except Exception as exc:  # torch.load of arbitrary bytes can raise nearly any type
            self.load(fresh)
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
            print(f"softcot train: warning: {path} is unreadable ({reason}); starting over")
            path.unlink(missing_ok=True)
            return False
        print(f"softcot train: resuming {path.parent} after epoch {self.epochs_done}")
        return True


@dataclass(frozen=True)
class Recipe:
    """What a fine-tuning run fits and how: the loop (`fit`) is the same for LoRA and Coconut."""

    model: torch.nn.Module  # the base with its adapters attached (trained in train mode)
    parameters: dict[str, torch.nn.Parameter]  # everything trained
    examples: int
    batch: Callable[[int, list[int]], Batch]  # (epoch, example indices) -> a micro-batch
    loss: Callable[[Batch], torch.Tensor]  # a micro-batch's summed loss
    reset_before: Callable[[int], bool] = lambda epoch: False  # a fresh optimizer state before it


def fit(recipe: Recipe, settings: Mapping[str, Any], out_dir: Path, fingerprint: dict) -> dict[str, Any]:
    """AdamW (weight decay `weight_decay`), linear decay to 0 without warm-up, seeded data order and
    dropout; each step's loss is the mean over its supervised tokens. The state is saved after every
    epoch (resume.pt beside the checkpoint) and the loss logged with dvclive ('train/loss')."""
    from dvclive import Live
    from tqdm import tqdm

    from softcot.train import _steps

    device = next(recipe.model.parameters()).device
    steps_per_epoch = math.ceil(recipe.examples / (settings["batch_size"] * settings["grad_accum"]))
    total_steps = int(settings["epochs"]) * steps_per_epoch
    trainable = list(recipe.parameters.values())
    with seeded_rng(int(settings["seed"]), device):
        optimizer = torch.optim.AdamW(
            trainable, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=settings["weight_decay"]
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / total_steps)
        )
        generator = torch.Generator().manual_seed(int(settings["seed"]))
        state = FitState(recipe.parameters, optimizer, scheduler, generator, device, [], [])
        resume_path = out_dir / RESUME_NAME
        state.restore(resume_path, fingerprint)

        live = Live(dir=str(out_dir / "dvclive"), dvcyaml=False, save_dvc_exp=False)
        for loss in state.step_losses:  # replayed, so a resumed run logs what an uninterrupted one does
            live.log_metric("train/loss", loss)
            live.next_step()
        progress = tqdm(
            total=total_steps, initial=len(state.step_losses), desc=f"train {out_dir}", unit="step"
        )
        recipe.model.train()  # LoRA dropout
        try:
            for epoch in range(state.epochs_done, int(settings["epochs"])):
                if epoch > 0 and recipe.reset_before(epoch):
                    optimizer.state.clear()  # a fresh AdamW state; the schedule runs on
                order = torch.randperm(recipe.examples, generator=state.generator).tolist()
                epoch_start = len(state.step_losses)
                for micro in _steps(order, settings["batch_size"], settings["grad_accum"]):
                    batches = [recipe.batch(epoch, indices) for indices in micro]
                    tokens = sum(batch.tokens for batch in batches)
                    step_loss = 0.0
                    for batch in batches:
                        loss_sum = recipe.loss(batch)
                        (loss_sum / tokens).backward()
                        step_loss += loss_sum.item() / tokens
                    if settings["max_grad_norm"] is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, settings["max_grad_norm"])
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step_losses.append(step_loss)
                    live.log_metric("train/loss", step_loss)
                    live.next_step()
                    progress.update()
                    progress.set_postfix(loss=f"{step_loss:.4f}")
                epoch_losses = state.step_losses[epoch_start:]
                state.epoch_losses.append(sum(epoch_losses) / len(epoch_losses))
                state.epochs_done += 1
                state.save(resume_path, fingerprint)
        finally:
            recipe.model.eval()
            progress.close()
        live.end()
    return {
        "steps": len(state.step_losses),
        "first_step_loss": state.step_losses[0],
        "last_step_loss": state.step_losses[-1],
        "epoch_losses": state.epoch_losses,
        "final_loss": state.epoch_losses[-1],
    }


def training_record(context: TrainingContext, base: Any, prompt_set: Any, skipped: list[str]) -> dict:
    """The record's inputs part (the fingerprint of a run: a resume file of other inputs is ignored)."""
    import peft
    import transformers

    from softcot.io import sha256_file

    return {
        "pair": context.pair,
        "base": base.spec.name,
        "dataset": context.dataset,
        "skipped_overlong": len(skipped),
        "skipped_overlong_ids": skipped,
        "data_sha256": sha256_file(context.train_file),
        "prompt_set": prompt_set.name,
        "prompt_set_sha256": prompt_set.sha256,
        "option_format": context.settings["option_format"],
        "settings": context.settings,
        "versions": {
            "torch": str(torch.__version__),
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }


def load_base(context: TrainingContext) -> Any:
    from softcot.models import load_model

    return load_model(context.settings["pair"]["base"], context.models_dir, local_paths=context.local_paths)


def train_lora(context: TrainingContext) -> dict[str, Any]:
    """Fit LoRA adapters on the base's Zero-Shot CoT training sequences; write the adapter and
    return the training record. The base's weights are untouched (the adapters are detached after)."""
    from softcot.prompts import load_prompt_set
    from softcot.thoughts import base_embeddings
    from softcot.train import lm_loss_sum

    settings = context.settings
    base = load_base(context)
    prompt_set = load_prompt_set(settings["prompt_set"])
    renderer = PromptRenderer(prompt_set, base, settings["option_format"])
    drop_last = bool(settings["drop_last_train_token"])
    examples = context.read_examples()
    encoded = {e["id"]: cot_sequence(renderer, e, drop_last) for e in examples}
    examples, skipped = keep_short_enough(
        examples, lambda e: sum(map(len, encoded[e["id"]])), settings, str(context.train_file)
    )
    sequences = [encoded[e["id"]] for e in examples]
    record = training_record(context, base, prompt_set, skipped)
    record["examples"] = len(examples)
    device = next(base.model.parameters()).device

    def loss(batch: Batch) -> torch.Tensor:
        embeds = base_embeddings(base.model, batch.ids.to(device))
        return lm_loss_sum(base.model, embeds, batch.mask, batch.labels)[0]

    peft_model = attach_lora(base.model, settings)
    try:
        parameters = {n: p for n, p in base.model.named_parameters() if p.requires_grad}
        recipe = Recipe(
            base.model,
            parameters,
            len(examples),
            lambda epoch, indices: lora_batch(base, [sequences[i] for i in indices]),
            loss,
        )
        record.update(fit(recipe, settings, context.checkpoint.parent, fingerprint=dict(record)))
        record["trainable_parameters"] = sum(p.numel() for p in parameters.values())
        save_adapter(peft_model, context.checkpoint, base.spec.name)
    finally:
        peft_model.unload()  # the base's own modules back in place (their weights never changed)
    (context.checkpoint.parent / RESUME_NAME).unlink(missing_ok=True)
    print(
        f"softcot train: wrote {context.checkpoint}; loss {record['first_step_loss']:.4f} -> "
        f"{record['last_step_loss']:.4f} over {record['steps']} steps"
    )
    return record


METHODS = (LoRAFineTuning,)
