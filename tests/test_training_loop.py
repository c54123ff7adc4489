"""The one training loop (softcot.training.loop) on a toy recipe: the optimizer reset a recipe asks
for really starts Adam afresh, and the per-step parts of a loss are recorded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from softcot.training import loop
from softcot.training.loop import LossShare, Recipe, fit

SETTINGS = {"lr": 0.1, "batch_size": 1, "grad_accum": 1, "epochs": 3, "max_grad_norm": None, "seed": 0}
ONE_TOKEN = torch.tensor([[-100, 0]])  # one supervised next-token target


def toy_recipe(weight: torch.nn.Parameter, reset: bool, asked: list[int]) -> Recipe:
    def loss(batch, step) -> LossShare:
        value = ((weight - 3.0) ** 2).sum()
        return LossShare(value, value.item(), {"half": value.item() / 2})

    def reset_optimizer(epoch: int) -> bool:
        asked.append(epoch)
        return reset and epoch > 0

    return Recipe(
        {"weight": weight},
        examples=1,
        batch=lambda epoch, indices: SimpleNamespace(labels=ONE_TOKEN),
        loss=loss,
        reset_optimizer=reset_optimizer,
    )


def run(tmp_path, reset: bool, monkeypatch) -> tuple[list[float], list[int], dict]:
    weight = torch.nn.Parameter(torch.zeros(1))
    asked, moves = [], []
    real_step = loop._optimizer_step

    def step(parameters, optimizer, scheduler, max_grad_norm) -> None:
        before = weight.item()
        real_step(parameters, optimizer, scheduler, max_grad_norm)
        moves.append(weight.item() - before)

    monkeypatch.setattr(loop, "_optimizer_step", step)
    saved = []
    losses, parts = fit(
        toy_recipe(weight, reset, asked), SETTINGS, tmp_path, {}, save=lambda: saved.append(1)
    )
    assert saved == [1] and losses["steps"] == 3 and not (tmp_path / loop.RESUME_NAME).exists()
    return moves, asked, parts


def test_a_reset_starts_adam_afresh_each_epoch(tmp_path, monkeypatch):
    """One step per epoch: after a reset, Adam's first step moves the weight by the learning rate
    (bias-corrected m / sqrt(v) = sign of the gradient); without resets the second step differs."""
    moves, asked, _ = run(tmp_path / "reset", True, monkeypatch)
    assert asked == [0, 1, 2]
    rates = [0.1 * (1 - step / 3) for step in range(3)]  # linear decay to 0 over 3 steps
    assert moves == pytest.approx(rates, rel=1e-5)
    kept, _, _ = run(tmp_path / "kept", False, monkeypatch)
    assert kept[0] == pytest.approx(rates[0], rel=1e-5)
    assert kept[1] != pytest.approx(rates[1], rel=1e-3)


def test_the_parts_of_each_step_are_recorded(tmp_path, monkeypatch):
    _, _, parts = run(tmp_path, True, monkeypatch)
    assert list(parts) == ["half"] and len(parts["half"]) == 3
    assert parts["half"][0] == pytest.approx(4.5)  # (0 - 3)^2 / 2 before the first step
