"""Soft thoughts: assistant states at the slot, projection, splice into the base embeddings."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from softcot.errors import ConfigError, ModelError
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots, locate_base_slots
from softcot.thoughts import (
    CENTER_SCALE_FLOOR,
    Projector,
    assistant_states,
    base_embeddings,
    load_projector,
    right_pad,
    save_projector,
    splice_thoughts,
)


def encode(model, examples, n, kind):
    renderer = PromptRenderer(load_prompt_set("paper"), model, "{letter}){text}")
    rows = [
        renderer.assistant_ids(e, n) if kind == "assistant" else renderer.base_ids(e, n) for e in examples
    ]
    return rows, *right_pad(rows, model.pad_id)


def test_assistant_states_are_last_layer_states_at_the_slot(tiny_assistant, gsm8k_examples):
    """Batched and padded == one example at a time through the full model's hidden_states[-1]."""
    n = 4
    rows, ids, mask = encode(tiny_assistant, gsm8k_examples, n, "assistant")
    assert len({len(r) for r in rows}) > 1  # the batch really is padded
    starts = locate_assistant_slots(
        ids, mask, tiny_assistant.placeholder_ids, n, [e["id"] for e in gsm8k_examples]
    )
    states = assistant_states(tiny_assistant.model, ids, mask, starts, n)
    assert states.shape == (len(rows), n, 48) and not states.requires_grad
    unk = tiny_assistant.placeholder_ids.unk
    for row, got in zip(rows, states, strict=True):
        out = tiny_assistant.model(torch.tensor([row]), output_hidden_states=True)
        first = row.index(unk)
        assert row[first : first + n] == [unk] * n
        torch.testing.assert_close(got, out.hidden_states[-1][0, first : first + n], rtol=1e-5, atol=1e-5)


def test_base_gets_projected_states_at_the_slot_and_its_own_embeddings_elsewhere(tiny_base, gsm8k_examples):
    n = 4
    rows, ids, mask = encode(tiny_base, gsm8k_examples, n, "base")
    starts = locate_base_slots(ids, mask, tiny_base.placeholder_ids, n, [e["id"] for e in gsm8k_examples])
    projector = Projector.seeded(48, 32, seed=3)
    states = torch.randn(len(rows), n, 48, generator=torch.Generator().manual_seed(0))
    spliced = splice_thoughts(base_embeddings(tiny_base.model, ids), starts, projector(states))

    table = tiny_base.model.get_input_embeddings().weight
    for b, row in enumerate(rows):  # independent computation, one example and one position at a time
        slot = row.index(tiny_base.placeholder_ids.bot) + 1
        for position in range(ids.shape[1]):
            if slot <= position < slot + n:
                expected = states[b, position - slot] @ projector.weight.T + projector.bias
            else:
                expected = table[ids[b, position]]
            torch.testing.assert_close(spliced[b, position], expected)


def test_splice_is_out_of_place_and_differentiable():
    embeds = torch.zeros(2, 6, 3)
    thoughts = torch.ones(2, 2, 3, requires_grad=True)
    out = splice_thoughts(embeds, torch.tensor([1, 3]), thoughts * torch.tensor([1.0, 2.0]).view(1, 2, 1))
    assert embeds.abs().sum() == 0
    assert out[0, 1:3, 0].tolist() == [1.0, 2.0] and out[1, 3:5, 0].tolist() == [1.0, 2.0]
    assert out[0, 3:].abs().sum() == 0 and out[1, :3].abs().sum() == 0
    out.sum().backward()
    assert thoughts.grad.tolist() == [[[1.0] * 3, [2.0] * 3]] * 2


def test_projection_is_per_token_so_n_can_change():
    projector = Projector.seeded(48, 32, seed=0)
    states = torch.randn(2, 32, 48)
    full = projector(states)
    torch.testing.assert_close(projector(states[:, :4]), full[:, :4])
    torch.testing.assert_close(projector(states[:, 7:8]), full[:, 7:8])


def test_seeded_init_is_repeatable_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = Projector.seeded(48, 32, seed=7)
    assert torch.rand(1) == expected_next
    b = Projector.seeded(48, 32, seed=7)
    c = Projector.seeded(48, 32, seed=8)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)
    assert a.weight.dtype == torch.float32 and a.weight.shape == (32, 48) and a.bias.shape == (32,)


def test_master_weights_stay_float32_when_the_model_runs_in_bf16():
    projector = Projector.seeded(8, 4, seed=0)
    out = projector(torch.randn(1, 2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    embeds = torch.zeros(1, 5, 4, dtype=torch.bfloat16)
    assert splice_thoughts(embeds, torch.tensor([1]), out).dtype == torch.bfloat16


def test_checkpoint_round_trip_and_bytes(tmp_path):
    projector = Projector.seeded(48, 32, seed=5)
    save_projector(tmp_path / "a.safetensors", projector)
    save_projector(tmp_path / "b.safetensors", Projector.seeded(48, 32, seed=5))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = load_projector(tmp_path / "a.safetensors")
    assert set(loaded.state_dict()) == {"weight", "bias"}
    assert torch.equal(loaded.weight, projector.weight) and torch.equal(loaded.bias, projector.bias)
    assert loaded.weight.dtype == torch.float32


def test_bad_checkpoints_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_projector(tmp_path / "missing.safetensors")
    save_file(
        {"weight": torch.zeros(4, 8), "bias": torch.zeros(4), "embedding": torch.zeros(2, 8)}, tmp_path / "x"
    )
    with pytest.raises(ModelError, match=r"x: expected exactly the tensors \['bias', 'weight'\], found"):
        load_projector(tmp_path / "x")
    save_file({"weight": torch.zeros(4, 8), "bias": torch.zeros(5)}, tmp_path / "y")
    with pytest.raises(ModelError, match="do not form a Linear"):
        load_projector(tmp_path / "y")


# --- centring (train.projection_center) -----------------------------------------------------------
def _states(seed: int = 0) -> torch.Tensor:
    """[examples, N, H_a] states with a large common component, as the assistant's are."""
    generator = torch.Generator().manual_seed(seed)
    common = 40 * torch.randn(48, generator=generator)
    return common + torch.randn(10, 4, 48, generator=generator) * torch.rand(48, generator=generator).add(0.1)


def _centred(center: str, states: torch.Tensor) -> Projector:
    projector = Projector.seeded(48, 32, seed=3, center=center)
    projector.fit_center(states)
    return projector


def test_without_centring_the_projector_is_the_papers_linear_map():
    states = _states()
    projector = Projector.seeded(48, 32, seed=3)
    assert projector.center == "none" and set(projector.state_dict()) == {"weight", "bias"}
    projector.fit_center(states)  # nothing to fit
    assert set(projector.state_dict()) == {"weight", "bias"}
    expected = torch.nn.functional.linear(states, projector.weight, projector.bias)
    assert torch.equal(projector(states), expected)
    # Every centring starts from the same drawn weight and bias.
    centred = Projector.seeded(48, 32, seed=3, center="standardize")
    assert torch.equal(centred.weight, projector.weight) and torch.equal(centred.bias, projector.bias)


def test_mean_centring_removes_a_vector_common_to_every_state():
    states = _states()
    shift = 25 * torch.randn(48, generator=torch.Generator().manual_seed(9))
    plain, shifted = _centred("mean", states), _centred("mean", states + shift)
    torch.testing.assert_close(shifted(states + shift), plain(states), rtol=0, atol=1e-4)
    assert torch.allclose(shifted.center_mean, states.reshape(-1, 48).mean(0) + shift, atol=1e-4)
    # The paper's projector sees the shift (so the check above is not vacuous).
    paper = Projector.seeded(48, 32, seed=3)
    assert (paper(states + shift) - paper(states)).abs().max() > 1
    # `mean` does not rescale: scaling the states scales its input.
    assert not torch.allclose(_centred("mean", states * 3)(states * 3), plain(states), atol=1e-2)


def test_standardizing_also_removes_a_positive_scale_per_dimension():
    states = _states()
    scale = torch.rand(48, generator=torch.Generator().manual_seed(4)) * 20 + 0.05
    plain, scaled = _centred("standardize", states), _centred("standardize", states * scale + 7)
    torch.testing.assert_close(scaled(states * scale + 7), plain(states), rtol=0, atol=1e-4)
    flat = states.reshape(-1, 48).double()
    assert torch.allclose(plain.center_scale.double(), flat.std(0, correction=0), rtol=1e-5)
    # A dimension constant over the training states is divided by the floor, not by zero.
    constant = states.clone()
    constant[..., 5] = 2.0
    floored = _centred("standardize", constant)
    assert float(floored.center_scale[5]) == pytest.approx(CENTER_SCALE_FLOOR)
    assert torch.isfinite(floored(constant)).all()


def test_an_unknown_centring_names_the_key():
    with pytest.raises(ConfigError, match="train.projection_center: unknown value 'median'"):
        Projector(48, 32, center="median")


def test_the_papers_checkpoint_holds_exactly_weight_and_bias_bytes_as_before(tmp_path):
    projector = Projector.seeded(48, 32, seed=5)
    save_projector(tmp_path / "a.safetensors", projector)
    # What save_projector wrote before centring existed: the two tensors, nothing else.
    save_file({"weight": projector.weight.detach(), "bias": projector.bias.detach()}, tmp_path / "old")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "old").read_bytes()
    assert load_projector(tmp_path / "old").center == "none"


@pytest.mark.parametrize(
    ("center", "tensors"),
    [
        ("mean", ["bias", "center_mean", "weight"]),
        ("standardize", ["bias", "center_mean", "center_scale", "weight"]),
    ],
)
def test_a_centred_checkpoint_round_trips_with_its_statistics(tmp_path, center, tensors):
    states = _states()
    projector = _centred(center, states)
    with torch.no_grad():
        projector.weight.add_(0.5)  # as if trained
    save_projector(tmp_path / "p.safetensors", projector)
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == tensors
    loaded = load_projector(tmp_path / "p.safetensors")
    assert loaded.center == center
    for name, tensor in projector.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded(states), projector(states))
    # Statistics that differ change the projection: they are really read back.
    other = _centred(center, states + 1)
    other.load_state_dict(dict(other.state_dict(), weight=projector.weight, bias=projector.bias))
    assert not torch.allclose(other(states), loaded(states))


def test_a_checkpoint_of_another_layout_is_a_model_error(tmp_path):
    weight, bias = torch.zeros(32, 48), torch.zeros(32)
    save_file({"weight": weight, "bias": bias, "center_scale": torch.ones(48)}, tmp_path / "scale")
    with pytest.raises(
        ModelError, match=r"scale: expected exactly the tensors \['bias', 'weight'\], found"
    ) as error:
        load_projector(tmp_path / "scale")
    assert "['bias', 'center_mean', 'center_scale', 'weight'] (standardize)" in str(error.value)
    save_file({"weight": weight, "bias": bias, "center_mean": torch.ones(32)}, tmp_path / "short")
    with pytest.raises(ModelError, match="do not match the weight's input size 48"):
        load_projector(tmp_path / "short")
