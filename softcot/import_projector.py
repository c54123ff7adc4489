"""`softcot import-projector`: the authors' released `projection.bin` as this project's checkpoint.

The reference saves the projection's state dict with `torch.save` as `{weight [H_b, H_a], bias
[H_b]}` in bf16 (docs/protocol.md §7). Converted to `projector.safetensors` (the same two keys, in
the dtype it was saved in), it evaluates like a projector trained here: users who could not reach
the paper's numbers with their own training can evaluate the authors' projectors as a table row.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path

import torch

from softcot.errors import ModelError
from softcot.thoughts import Projector, check_projector_file, save_projector

KEYS = ("bias", "weight")


def read_reference_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a reference `projection.bin`; anything else is a ModelError naming the file."""
    if not path.is_file():
        raise ModelError(f"{path}: no such file (the authors' projection.bin)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    if tuple(sorted(state)) != KEYS:
        found = sorted(state)
        raise ModelError(
            f"{path}: expected exactly the keys {list(KEYS)} of the reference projection, found {found}"
        )
    weight, bias = state["weight"], state["bias"]
    if weight.dim() != 2 or list(bias.shape) != [weight.shape[0]]:
        raise ModelError(
            f"{path}: weight {list(weight.shape)} and bias {list(bias.shape)} do not form a Linear"
        )
    if not weight.is_floating_point() or not bias.is_floating_point():
        raise ModelError(f"{path}: expected floating-point tensors, got {weight.dtype} and {bias.dtype}")
    return state


def import_projector(
    source: Path, out: Path, assistant_dim: int | None = None, base_dim: int | None = None
) -> Projector:
    """Convert `source` and write `out`; with dimensions given, a projector of another pair is refused."""
    state = read_reference_state(source)
    weight = state["weight"]
    expected = [base_dim or weight.shape[0], assistant_dim or weight.shape[1]]
    if list(weight.shape) != expected:
        raise ModelError(
            f"{source}: weight {list(weight.shape)} does not map the assistant's hidden size {expected[1]} "
            f"to the base's {expected[0]}; it was released for another pair"
        )
    projector = Projector(weight.shape[1], weight.shape[0], dtype=weight.dtype)
    projector.load_state_dict({key: state[key].contiguous() for key in KEYS})
    save_projector(out, projector)
    check_projector_file(out, assistant_dim, base_dim)
    return projector


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="the reference's projection.bin")
    parser.add_argument("--out", type=Path, required=True, help="the projector.safetensors to write")
    parser.add_argument(
        "--assistant-dim", type=int, help="the assistant's hidden size, to refuse another pair's"
    )
    parser.add_argument("--base-dim", type=int, help="the base model's hidden size, likewise")


def run(args: argparse.Namespace) -> int:
    projector = import_projector(args.source, args.out, args.assistant_dim, args.base_dim)
    print(
        f"softcot import-projector: wrote {args.out} (weight {list(projector.weight.shape)}, "
        f"{projector.weight.dtype})"
    )
    return 0
