"""Soft thoughts: assistant states at its slot -> projection -> written over the base slot embeddings.

One code path for training and evaluation:

    starts_a = locate_assistant_slots(a_ids, a_mask, assistant.placeholder_ids, n, ids)
    states   = assistant_states(assistant.model, a_ids, a_mask, starts_a, n)     # [B, N, H_a]
    starts_b = locate_base_slots(b_ids, b_mask, base.placeholder_ids, n, ids)
    embeds   = splice_thoughts(base_embeddings(base.model, b_ids), starts_b, projector(states))

The projection acts token by token, so a projector trained with N = 32 serves N = 4 at
evaluation unchanged (protocol §1). Everything is batched: slots are found per row with tensor
operations and written with one scatter, so padding and slot positions may differ between rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from softcot.errors import ModelError
from softcot.io import atomic_path

MASTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names


class Projector(nn.Linear):
    """The trainable map from assistant states to base input embeddings: Linear(H_a, H_b) + bias.

    Its parameters are `weight` [H_b, H_a] and `bias` [H_b], the paper's key names. They stay in
    float32 (the "master" weights) even when the models run in bf16; the output is cast to the
    base's dtype only when spliced.
    """

    def __init__(self, assistant_dim: int, base_dim: int, dtype: torch.dtype = torch.float32):
        super().__init__(assistant_dim, base_dim, bias=True, dtype=dtype)

    @classmethod
    def seeded(
        cls, assistant_dim: int, base_dim: int, seed: int, dtype: torch.dtype = torch.float32
    ) -> Projector:
        """PyTorch's default Linear initialisation, drawn on the CPU from `seed` (§14 row 8), so the
        same seed gives the same projector on any device and leaves the global RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(assistant_dim, base_dim, dtype=dtype)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return super().forward(states.to(self.weight.dtype))


def save_projector(path: str | Path, projector: Projector) -> None:
    """Write only the trainable tensors, with no metadata, so equal weights give equal bytes."""
    tensors = {name: p.detach().cpu().contiguous() for name, p in projector.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _unreadable(path: Path, exc: Exception) -> ModelError:
    return ModelError(
        f"{path}: not a readable projector checkpoint ({exc}); the file is corrupt or truncated: "
        "delete it and train again (softcot train, or rerun snakemake)"
    )


def check_projector_file(
    path: str | Path, assistant_dim: int | None = None, base_dim: int | None = None
) -> tuple[int, int]:
    """Check a projector checkpoint from its header alone (no tensor is read); return its
    (assistant_dim, base_dim). Cheap enough to call before loading any model.

    Anything but a complete safetensors file holding a float `weight` [H_b, H_a] and `bias` [H_b]
    (of the given dimensions, when given) is a ModelError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: projector checkpoint not found (train it first: softcot train)")
    try:
        with safe_open(str(path), framework="pt") as f:  # checks the header covers the whole file
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
            shapes = {name: s.get_shape() for name, s in slices.items()}
            dtypes = {name: s.get_dtype() for name, s in slices.items()}
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    if set(shapes) == {"weight", "bias", "embedding"}:
        raise ModelError(
            f"{path}: expected exactly the tensors ['bias', 'weight'], found {sorted(shapes)}: a SoftCoT++ "
            "checkpoint ([INI] embeddings); SoftCoT evaluates a SoftCoT projector, the two are not "
            "interchangeable"
        )
    if set(shapes) != {"weight", "bias"}:
        raise ModelError(f"{path}: expected exactly the tensors ['bias', 'weight'], found {sorted(shapes)}")
    weight, bias = shapes["weight"], shapes["bias"]
    if len(weight) != 2 or bias != [weight[0]]:
        raise ModelError(f"{path}: weight {weight} and bias {bias} do not form a Linear")
    if any(dtype not in FLOAT_DTYPES for dtype in dtypes.values()):
        raise ModelError(f"{path}: expected floating-point tensors, found {dtypes}")
    expected = [base_dim or weight[0], assistant_dim or weight[1]]
    if weight != expected:
        raise ModelError(
            f"{path}: weight {weight} does not map the assistant's hidden size {expected[1]} "
            f"to the base's {expected[0]}; it was trained for another pair"
        )
    return weight[1], weight[0]


def load_projector(path: str | Path, device: torch.device | str | None = None) -> Projector:
    """Read a checkpoint written by `save_projector`; anything else is a ModelError naming the file."""
    path = Path(path)
    check_projector_file(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    weight = tensors["weight"]
    projector = Projector(weight.shape[1], weight.shape[0], dtype=weight.dtype)
    projector.load_state_dict(tensors)
    return projector.to(device) if device is not None else projector


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack id lists into `ids` [B, L] and `attention_mask` [B, L], padding on the right.

    Right padding keeps every row's positions 0..len-1 and, the models being causal, leaves the
    states of real tokens as they would be without the batch.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


def _slot_index(starts: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Gather/scatter index [B, n, width] addressing positions starts[b] .. starts[b] + n - 1."""
    positions = starts.unsqueeze(1) + torch.arange(n, device=starts.device).unsqueeze(0)
    return positions.unsqueeze(2).expand(-1, -1, width)


@torch.no_grad()
def assistant_states(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, starts: torch.Tensor, n: int
) -> torch.Tensor:
    """The assistant's last-layer states after the final norm (HF `hidden_states[-1]`) at its N
    slot positions: [B, N, H_a]. One forward through the decoder only; the LM head is skipped."""
    # One pass, nothing decoded after it: no KV cache to build.
    hidden = model.base_model(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden.gather(1, _slot_index(starts.to(hidden.device), n, hidden.shape[-1]))


def base_embeddings(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The base model's input embeddings of `ids` [B, L] -> [B, L, H_b] (scaled as the model scales
    them, e.g. Gemma's sqrt(H) factor lives in its embedding module)."""
    return model.get_input_embeddings()(ids)


def splice_thoughts(embeds: torch.Tensor, starts: torch.Tensor, thoughts: torch.Tensor) -> torch.Tensor:
    """Return `embeds` [B, L, H] with rows starts[b] .. starts[b] + N - 1 replaced by `thoughts`
    [B, N, H] (cast to the embeddings' dtype). Out of place, so gradients reach `thoughts`."""
    n = thoughts.shape[1]
    index = _slot_index(starts.to(embeds.device), n, embeds.shape[-1])
    return embeds.scatter(1, index, thoughts.to(embeds.dtype))
