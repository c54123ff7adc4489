"""Loading a materialized model: frozen weights, a left-padding tokenizer and the verified token ids.

Every later step (training, thoughts, generation) gets its model here, so the checks that the
placeholder, stop and pad tokens are single ids of this tokenizer happen in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from softcot.errors import ModelError
from softcot.models.manifest import MANIFEST_NAME, file_problems, read_manifest, repair_hint
from softcot.models.registry import ModelSpec, get_spec


class PlaceholderIds(NamedTuple):
    unk: int
    bot: int
    eot: int

    @property
    def template_writes_markers(self) -> bool:
        """Whether the chat template itself writes BOT/EOT (then they may occur outside the slot)."""
        return False


class TemplateMarkerIds(PlaceholderIds):
    """Placeholder ids of a model whose chat template writes BOT and EOT itself (Qwen3's
    <think></think>): the slot is still the one run of N UNK with BOT before and EOT after it."""

    __slots__ = ()

    @property
    def template_writes_markers(self) -> bool:
        return True


@dataclass(frozen=True)
class LoadedModel:
    """A frozen model ready for forward passes and generation.

    The tokenizer pads on the LEFT, so the last position of every row in a batch is the last
    prompt token, which is what batched generation needs. Training code that right-pads must
    pass its own padding side.
    """

    model: Any
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    placeholder_ids: PlaceholderIds
    stop_ids: list[int]
    pad_id: int


def single_token_id(tokenizer: PreTrainedTokenizerBase, token: str, model: str, role: str) -> int:
    """The one id `token` encodes to; anything else is a ModelError naming the model and token."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelError(
            f"model {model}: {role} token {token!r} encodes to {len(ids)} ids {ids}, expected exactly one"
        )
    return ids[0]


def resolve_token_ids(
    tokenizer: PreTrainedTokenizerBase, spec: ModelSpec
) -> tuple[PlaceholderIds, list[int], int]:
    """(placeholder ids, stop ids, pad id) of the spec's token strings under this tokenizer."""
    placeholders = spec.placeholders
    ids = (TemplateMarkerIds if spec.template_writes_markers else PlaceholderIds)(
        unk=single_token_id(tokenizer, placeholders.unk, spec.name, "placeholders.unk"),
        bot=single_token_id(tokenizer, placeholders.bot, spec.name, "placeholders.bot"),
        eot=single_token_id(tokenizer, placeholders.eot, spec.name, "placeholders.eot"),
    )
    if len(set(ids)) != 3:
        raise ModelError(
            f"model {spec.name}: placeholders unk/bot/eot must be three different tokens, got {ids}"
        )
    stop_ids = [
        single_token_id(tokenizer, token, spec.name, f"generation.stop_tokens[{i}]")
        for i, token in enumerate(spec.generation.stop_tokens)
    ]
    pad_id = single_token_id(tokenizer, spec.generation.pad_token, spec.name, "generation.pad_token")
    if spec.chat_template and not tokenizer.chat_template:
        raise ModelError(f"model {spec.name}: spec says chat_template: true but the tokenizer has none")
    return ids, stop_ids, pad_id


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_materialized(spec: ModelSpec, models_dir: str | Path, device: str | None = None) -> LoadedModel:
    """Load `models_dir/<spec.name>`, which must be a complete build of this very spec.

    Every file its manifest lists must be there with its recorded size (a stat each; sha256 is
    `softcot verify --hashes`), so a deleted or truncated file is named before any weight loads.
    """
    path = Path(models_dir) / spec.name
    manifest = read_manifest(path)
    if manifest is None:
        raise ModelError(
            f"{path}: model {spec.name!r} is not materialized; "
            f"run `softcot materialize {spec.name} --models-dir {models_dir}`"
        )
    if manifest.get("spec") != spec.to_dict():
        raise ModelError(
            f"{path / MANIFEST_NAME}: built from another spec of {spec.name!r} than the registry's; "
            f"run `softcot materialize {spec.name} --models-dir {models_dir}` again"
        )
    problems = file_problems(path, manifest)
    if problems:
        raise ModelError(
            f"{'; '.join(problems)}: the materialized model {spec.name!r} is incomplete; "
            f"{repair_hint(spec.name, models_dir)}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        tokenizer.pad_token = spec.generation.pad_token
        placeholder_ids, stop_ids, pad_id = resolve_token_ids(tokenizer, spec)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, spec.dtype), device_map=device or default_device()
        )
    except (ModelError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # a file of the right size but corrupt: tokenizers raises a bare Exception
        raise ModelError(
            f"{path}: cannot load model {spec.name!r} ({type(exc).__name__}: {exc}); find the damaged "
            f"file with `softcot verify {spec.name} --models-dir {models_dir} --hashes --invalidate`, "
            f"then {repair_hint(spec.name, models_dir)}"
        ) from exc
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, spec, placeholder_ids, stop_ids, pad_id)


def load_model(
    name: str,
    models_dir: str | Path = "results/models",
    device: str | None = None,
    local_paths: dict[str, str] | None = None,
) -> LoadedModel:
    """Load a registered, materialized model (frozen, eval mode) with its tokenizer and token ids.
    `local_paths` must be the one it was materialized with (registry.get_spec)."""
    return load_materialized(get_spec(name, local_paths), models_dir, device)
