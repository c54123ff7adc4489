"""SoftCoT++'s K soft-thought chains (protocol §12): the projection with K [INI] embeddings, its
checkpoint, and the forward pass that runs the K chains of a batch at once.

Chain k of an example has every one of its N assistant slot embeddings replaced by INI_k. The
prompt before the slot is the same for every chain, so it runs once per example (without autograd
when training) and its keys and values are repeated K times; only the slot onwards runs K times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from softcot.errors import ModelError
from softcot.thoughts import FLOAT_DTYPES, Projector, splice_thoughts

CHECKPOINT_KEYS = ("bias", "embedding", "weight")


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
