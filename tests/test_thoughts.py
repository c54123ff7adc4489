"""Soft thoughts: assistant states at the slot, projection, splice into the base embeddings."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from softcot.errors import ModelError
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots, locate_base_slots
from softcot.thoughts import (
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
