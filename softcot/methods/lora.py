"""LoRA fine-tuning (protocol §11): LoRA adapters (`peft`) on the base model, trained on the task's
chain-of-thought targets after the Zero-Shot CoT prompt, and evaluated with that prompt through the
adapted base.

The base model's own weights never change: training attaches the adapters, fits them (the base
frozen), saves the adapter tensors alone in peft's format and detaches them again; evaluation
merges them into the freshly loaded base (one matmul per layer saved at every step; every row of a
batch goes through the same merged weights, so batch invariance holds as for the other methods).

Also here, for Coconut (softcot.methods.coconut), which trains LoRA the same way: attaching,
saving and merging the adapter, and the Zero-Shot CoT training sequence. The loop is
softcot.training.loop's.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softcot.errors import DataError, ModelError
from softcot.evaluate import Job
from softcot.io import atomic_path, sha256_file
from softcot.methods.base import Method
from softcot.prompts.render import PromptRenderer
from softcot.prompts.sets import load_prompt_set, question_text
from softcot.thoughts import base_embeddings, right_pad
from softcot.training.context import TrainingContext
from softcot.training.loop import LossShare, Recipe, Step, fit, token_mean
from softcot.training.losses import IGNORE, lm_loss_sum

ADAPTER_CONFIG = "adapter_config.json"  # peft's name (the artefact's `config` file, methods.yaml)


class LoRAFineTuning(Method):
    kind = "lora"

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
    equal tensors give equal bytes) and `adapter_config.json` beside it (its lists sorted, likewise)."""
    from safetensors.torch import save_file

    config = copy.deepcopy(peft_model.peft_config["default"])
    config.base_model_name_or_path = base_name  # the registry's name, not a machine's path
    config.inference_mode = True
    # peft keeps the target modules as a set, whose order follows Python's per-process string
    # hashing: sorted, equal adapters give equal config bytes in every process.
    config.target_modules = sorted(config.target_modules)
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


def lora_batch(base: Any, sequences: Sequence[tuple[list[int], list[int]]]) -> Batch:
    """(prompt, continuation) pairs right-padded, the loss on the continuations."""
    ids, mask = right_pad([prompt + rest for prompt, rest in sequences], base.pad_id)
    labels = ids.masked_fill(mask == 0, IGNORE)
    for row, (prompt, _) in enumerate(sequences):
        labels[row, : len(prompt)] = IGNORE
    return Batch(ids, mask, labels)


# --- training ----------------------------------------------------------------------------------------
def training_record(context: TrainingContext, base: Any, prompt_set: Any, skipped: list[str]) -> dict:
    """The record's inputs part (the fingerprint of a run: a resume file of other inputs is ignored)."""
    import peft
    import transformers

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


def train_lora(context: TrainingContext) -> dict[str, Any]:
    """Fit LoRA adapters on the base's Zero-Shot CoT training sequences; write the adapter and
    return the training record. The base's weights are untouched (the adapters are detached after)."""
    settings = context.settings
    base = context.load_base()
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

    def loss(batch: Batch, step: Step) -> LossShare:
        embeds = base_embeddings(base.model, batch.ids.to(device))
        return token_mean(lm_loss_sum(base.model, embeds, batch.mask, batch.labels)[0], step)

    def batch(epoch: int, indices: list[int]) -> Batch:
        return lora_batch(base, [sequences[i] for i in indices])

    fit_adapter(context, base, record, len(examples), batch, loss)
    print(
        f"softcot train: wrote {context.checkpoint}; loss {record['first_step_loss']:.4f} -> "
        f"{record['last_step_loss']:.4f} over {record['steps']} steps"
    )
    return record


def fit_adapter(
    context: TrainingContext,
    base: Any,
    record: dict[str, Any],
    examples: int,
    batch: Callable[[int, list[int]], Batch],
    loss: Callable[[Batch, Step], LossShare],
    extra: Mapping[str, torch.nn.Parameter] | None = None,
    reset_optimizer: Callable[[int], bool] = lambda epoch: False,
    save_extra: Callable[[], None] = lambda: None,
) -> None:
    """Attach LoRA to the base, fit it (and the `extra` tensors) with the one training loop (AdamW
    with `weight_decay`, dropout on), write the adapter (and what `save_extra` writes), detach it
    again, and add the losses and trainable parameter count to `record`, whose inputs part
    fingerprints the run."""
    settings = context.settings
    peft_model = attach_lora(base.model, settings)
    try:
        parameters = {n: p for n, p in base.model.named_parameters() if p.requires_grad}
        parameters.update(extra or {})
        recipe = Recipe(
            parameters,
            examples,
            batch,
            loss,
            weight_decay=settings["weight_decay"],
            module=base.model,
            reset_optimizer=reset_optimizer,
        )

        def save() -> None:
            save_adapter(peft_model, context.checkpoint, base.spec.name)
            save_extra()

        losses, _ = fit(recipe, settings, context.checkpoint.parent, fingerprint=dict(record), save=save)
        record.update(losses, trainable_parameters=sum(p.numel() for p in parameters.values()))
    finally:
        peft_model.unload()  # the base's own modules back in place (their weights never changed)
