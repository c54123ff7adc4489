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

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from softcot.errors import ConfigError, ModelError
from softcot.io import atomic_path

MASTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names
# train.projection_center, and the tensors each writes beside `weight` and `bias`.
CENTERS = {"none": (), "mean": ("center_mean",), "standardize": ("center_mean", "center_scale")}
# The least per-dimension spread `standardize` divides by: a dimension (nearly) constant over the
# training states is centred, not blown up. States are O(1)-O(100) (after a final norm).
CENTER_SCALE_FLOOR = 1e-4


class Projector(nn.Linear):
    """The trainable map from assistant states to base input embeddings: Linear(H_a, H_b) + bias.

    Its parameters are `weight` [H_b, H_a] and `bias` [H_b], the paper's key names. They stay in
    float32 (the "master" weights) even when the models run in bf16; the output is cast to the
    base's dtype only when spliced.

    `center` (train.projection_center) transforms the states before the Linear. `none` (the paper)
    leaves them as they are. `mean` subtracts `center_mean` [H_a], the per-dimension mean of the
    training states; `standardize` also divides by `center_scale` [H_a], their per-dimension
    standard deviation, floored at CENTER_SCALE_FLOOR. Both are buffers: saved in the checkpoint,
    never trained, set by `fit_center`.
    """

    def __init__(
        self, assistant_dim: int, base_dim: int, dtype: torch.dtype = torch.float32, center: str = "none"
    ):
        if center not in CENTERS:
            raise ConfigError(
                f"train.projection_center: unknown value {center!r} (known: {', '.join(CENTERS)})"
            )
        super().__init__(assistant_dim, base_dim, bias=True, dtype=dtype)
        self.center = center
        if center != "none":
            self.register_buffer("center_mean", torch.zeros(assistant_dim, dtype=dtype))
        if center == "standardize":
            self.register_buffer("center_scale", torch.ones(assistant_dim, dtype=dtype))

    @classmethod
    def seeded(
        cls,
        assistant_dim: int,
        base_dim: int,
        seed: int,
        dtype: torch.dtype = torch.float32,
        center: str = "none",
    ) -> Projector:
        """PyTorch's default Linear initialisation, drawn on the CPU from `seed` (§14 row 8), so the
        same seed gives the same projector on any device and leaves the global RNG untouched. The
        centring draws nothing: every `center` gets the same weight and bias."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(assistant_dim, base_dim, dtype=dtype, center=center)

    @torch.no_grad()
    def fit_center(self, states: torch.Tensor) -> None:
        """Set the centring statistics from the training states [..., H_a], over every example and
        slot position (in float64, stored in the master dtype); `none` has nothing to set."""
        if self.center == "none":
            return
        flat = states.reshape(-1, states.shape[-1]).double()
        self.center_mean.copy_(flat.mean(dim=0))
        if self.center == "standardize":
            self.center_scale.copy_(flat.std(dim=0, correction=0).clamp_min(CENTER_SCALE_FLOOR))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        states = states.to(self.weight.dtype)
        if self.center != "none":
            states = states - self.center_mean
        if self.center == "standardize":
            states = states / self.center_scale
        return super().forward(states)


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
    (of the given dimensions, when given), plus a centred projector's `center_mean` [H_a] and
    `center_scale` [H_a] (CENTERS), is a ModelError naming the file.
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
    projector_center(path, shapes)
    weight, bias = shapes["weight"], shapes["bias"]
    if len(weight) != 2 or bias != [weight[0]]:
        raise ModelError(f"{path}: weight {weight} and bias {bias} do not form a Linear")
    centring = {name: shape for name, shape in shapes.items() if name not in ("weight", "bias")}
    if any(shape != [weight[1]] for shape in centring.values()):
        raise ModelError(
            f"{path}: the centring tensors {centring} do not match the weight's input size {weight[1]}"
        )
    if any(dtype not in FLOAT_DTYPES for dtype in dtypes.values()):
        raise ModelError(f"{path}: expected floating-point tensors, found {dtypes}")
    expected = [base_dim or weight[0], assistant_dim or weight[1]]
    if weight != expected:
        raise ModelError(
            f"{path}: weight {weight} does not map the assistant's hidden size {expected[1]} "
            f"to the base's {expected[0]}; it was trained for another pair"
        )
    return weight[1], weight[0]


def projector_center(path: Path, names: Iterable[str]) -> str:
    """The train.projection_center whose checkpoint holds exactly the tensors `names`; anything
    else is a ModelError naming the file and every layout it may have."""
    found = sorted(names)
    for center, extra in CENTERS.items():
        if found == sorted(("weight", "bias", *extra)):
            return center
    layouts = "; ".join(
        f"{sorted(('weight', 'bias', *extra))} ({center})" for center, extra in CENTERS.items()
    )
    raise ModelError(
        f"{path}: expected exactly the tensors ['bias', 'weight'], found {found}; a projector checkpoint "
        f"holds one of these layouts (train.projection_center): {layouts}"
    )


def load_projector(path: str | Path, device: torch.device | str | None = None) -> Projector:
    """Read a checkpoint written by `save_projector`, with the centring its tensors show; anything
    else is a ModelError naming the file."""
    path = Path(path)
    check_projector_file(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    weight = tensors["weight"]
    center = projector_center(path, tensors)
    projector = Projector(weight.shape[1], weight.shape[0], dtype=weight.dtype, center=center)
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
