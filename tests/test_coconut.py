"""Coconut (LoRA) on tiny random models: the curriculum's sequences and label masks per stage, latent
positions fed with the previous position's last hidden state (checked against an independent
computation, in training and in evaluation), the checkpoint's contents and batch invariance."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from test_lora import SETTINGS, make_job, run_eval, run_train, serve_tiny_base, state_of

from softcot import evaluate as ev
from softcot.methods.coconut import (
    Markers,
    batch_embeddings,
    coconut_batch,
    coconut_hidden,
    load_markers,
    resets_optimizer,
    stage_layout,
    stage_of,
)
from softcot.methods.lora import cot_sequence
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.training.losses import IGNORE, supervised_loss_sum

CURRICULUM = {"latent_per_step": 2, "max_latent_stage": 2, "epochs_per_stage": 1, "reset_optimizer": True}
COCONUT = dict(SETTINGS, kind="coconut", epochs=4, **CURRICULUM)  # stages 0, 1, 2, 3 (all latent)


def examples_with_steps(gsm8k_examples: list[dict]) -> list[dict]:
    """GSM8K-like records with 1 to 3 rationale steps, so that stages leave out different counts."""
    return [
        dict(e, rationale=[f"Step {k} of example {i}: {i} + {k} = {i + k}." for k in range(1, 2 + i % 3)])
        for i, e in enumerate(gsm8k_examples)
    ]


def test_the_curriculum_follows_gsm_coconut():
    paper = {"latent_per_step": 2, "max_latent_stage": 3, "epochs_per_stage": 3}
    assert [stage_of(epoch, paper) for epoch in range(25)] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 13
    # (steps left out, latent positions) of a 2-step example: padded to the stage's latent count,
    # and past the last stage every step is left out while the latent count stays at its maximum.
    assert [stage_layout(stage, 2, paper) for stage in range(5)] == [(0, 0), (1, 2), (2, 4), (2, 6), (2, 6)]
    assert stage_layout(4, 5, paper) == (5, 6)


def test_reset_optimizer_starts_every_epoch_afresh_as_coconut_does():
    """facebookresearch/coconut builds a new AdamW at the start of every epoch, not only at a new
    stage: over the paper's 25-epoch curriculum that is 24 resets (3 stage changes and 21 more)."""
    paper = {"latent_per_step": 2, "max_latent_stage": 3, "epochs_per_stage": 3, "reset_optimizer": True}
    resets = [epoch for epoch in range(25) if resets_optimizer(epoch, paper)]
    assert resets == list(range(1, 25))
    assert not any(resets_optimizer(epoch, dict(paper, reset_optimizer=False)) for epoch in range(25))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_label_masks_per_stage(stage, tiny_base, gsm8k_examples):
    paper = load_prompt_set("paper")
    renderer = PromptRenderer(paper, tiny_base, None)
    examples = examples_with_steps(gsm8k_examples)[:3]
    layouts = [stage_layout(stage, len(e["rationale"]), COCONUT) for e in examples]
    m = layouts[0][1]
    sequences = [
        cot_sequence(renderer, e, False, skipped) for e, (skipped, _) in zip(examples, layouts, strict=True)
    ]
    batch = coconut_batch(tiny_base, sequences, m)
    marks = tiny_base.placeholder_ids
    assert (batch.start, batch.latents) == (max(len(p) for p, _ in sequences) + 1, m)
    for row, (example, (skipped, _)) in enumerate(zip(examples, layouts, strict=True)):
        ids = batch.ids[row][batch.mask[row] == 1].tolist()
        prompt = renderer.base_ids(example, 0)
        # prompt, BOT, m latent positions, EOT, then the rest: the first latent at one column in every row.
        assert ids[: len(prompt) + m + 2] == prompt + [marks.bot] + [marks.unk] * m + [marks.eot]
        assert batch.ids[row, batch.start - 1] == marks.bot and batch.ids[row, batch.start + m] == marks.eot
        # The loss covers exactly the remaining steps and the answer (numbered from 1).
        remaining = dict(example, rationale=example["rationale"][skipped:])
        target = paper.target("gsm8k", remaining, example["question"])
        supervised = batch.ids[row][batch.labels[row] != IGNORE]
        assert tiny_base.tokenizer.decode(supervised) == "<|im_start|>assistant\n" + target + "<|im_end|>\n"
        assert (batch.labels[row, : batch.start + m + 1] == IGNORE).all()
        if stage == 3:  # past the last stage: no rationale step is left in the target
            assert "Step 1 of example" not in target and skipped == len(example["rationale"])


def test_a_latent_input_is_the_last_hidden_state_of_the_position_before_it(tiny_base, gsm8k_examples):
    """Training: the KV-cache passes against one full forward per latent position, row by row."""
    renderer = PromptRenderer(load_prompt_set("paper"), tiny_base, None)
    examples = examples_with_steps(gsm8k_examples)[:3]
    m = 3
    batch = coconut_batch(tiny_base, [cot_sequence(renderer, e, False, 1) for e in examples], m)
    markers = Markers.from_model(tiny_base, m)
    torch.nn.init.normal_(markers.begin)  # markers of their own, not the vocabulary's rows
    model = tiny_base.model
    embeds, mask = batch_embeddings(model, markers, batch)
    with torch.no_grad():
        hidden, filled = coconut_hidden(model, embeds, mask, batch.start, m)
    for row in range(len(examples)):
        real = mask[row] == 1
        own = filled[row][real][None]  # the row alone, unpadded
        slot = batch.start - int((~real[: batch.start]).sum())  # the first latent position, unpadded
        torch.testing.assert_close(own[0, slot - 1], markers.begin)
        torch.testing.assert_close(own[0, slot + m], markers.end)
        for p in range(slot, slot + m):
            with torch.no_grad():
                previous = model.base_model(inputs_embeds=own[:, :p]).last_hidden_state[0, -1]
            torch.testing.assert_close(own[0, p], previous, rtol=1e-5, atol=1e-5)
        # And every hidden state equals one plain forward over what the model read.
        with torch.no_grad():
            full = model.base_model(inputs_embeds=own).last_hidden_state[0]
        torch.testing.assert_close(hidden[row][real], full, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_adapter_and_markers_through_the_latent_positions(
    tiny_base, gsm8k_examples, monkeypatch
):
    import softcot.methods.coconut as coconut
    from softcot.methods.lora import attach_lora

    captured = []

    def keep_thoughts(*args, **kwargs):
        thoughts, hiddens, cache = real(*args, **kwargs)
        for hidden in hiddens:  # each pass's last state is a thought: fed back, never scored
            hidden.retain_grad()
        captured.extend(hiddens)
        return thoughts, hiddens, cache

    real = coconut.latent_passes
    monkeypatch.setattr(coconut, "latent_passes", keep_thoughts)
    renderer = PromptRenderer(load_prompt_set("paper"), tiny_base, None)
    examples = examples_with_steps(gsm8k_examples)[:2]
    batch = coconut_batch(tiny_base, [cot_sequence(renderer, e, False, 1) for e in examples], 2)
    markers = Markers.from_model(tiny_base, 2)
    peft_model = attach_lora(tiny_base.model, COCONUT)
    try:
        embeds, mask = batch_embeddings(tiny_base.model, markers, batch)
        hidden, _ = coconut.coconut_hidden(tiny_base.model, embeds, mask, batch.start, 2)
        supervised_loss_sum(tiny_base.model, hidden[:, :-1], batch.labels[:, 1:])[0].backward()
        assert markers.begin.grad.abs().sum() > 0 and markers.end.grad.abs().sum() > 0
        # A pass's last hidden state reaches the loss only as the next latent input: its gradient
        # is the gradient through the latent positions (the prefix is never supervised).
        assert len(captured) == 2
        assert all(bool(hidden.grad[:, -1].abs().sum(dim=-1).gt(0).all()) for hidden in captured)
        lora = [
            p for n, p in tiny_base.model.named_parameters() if "lora_B" in n
        ]  # A starts with no gradient: B = 0
        assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    finally:
        peft_model.unload()
    assert all(not p.requires_grad for p in tiny_base.model.parameters())


# --- training --------------------------------------------------------------------------------------
@pytest.fixture
def coconut_adapter(tmp_path, monkeypatch, tiny_base, gsm8k_examples):
    workspace = serve_tiny_base(tmp_path, monkeypatch, tiny_base, examples_with_steps(gsm8k_examples))
    before = state_of(tiny_base.model)
    out = run_train(workspace, "coconut-run", COCONUT, "coconut")
    after = tiny_base.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    return out


def test_train_writes_adapter_and_markers_only(coconut_adapter, tiny_base):
    with safe_open(str(coconut_adapter / "adapter_model.safetensors"), framework="pt") as f:
        names = list(f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert len(names) == 8 and all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in names)
    with safe_open(str(coconut_adapter / "markers.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["begin", "end"] and f.metadata() == {"latents": "4"}  # 2 stages x 2
        assert f.get_tensor("begin").shape == (tiny_base.model.config.hidden_size,)
    record = json.loads((coconut_adapter / "adapter.json").read_text())
    assert record["stages"] == [0, 1, 2, 3] and record["latents"] == 4 and record["settings"] == COCONUT
    assert record["steps"] == 8  # ceil(6 / (2 x 2)) x 4 epochs
    initial = tiny_base.model.get_input_embeddings().weight[tiny_base.placeholder_ids.bot]
    assert not torch.equal(load_markers(coconut_adapter / "markers.safetensors").begin, initial)  # trained


# --- evaluation ------------------------------------------------------------------------------------
def test_evaluation_feeds_the_latent_thoughts_back_as_embeddings(
    coconut_adapter, tiny_base, gsm8k_examples, monkeypatch
):
    job = make_job(
        "coconut", tiny_base, gsm8k_examples[:3], artefact=coconut_adapter / "adapter_model.safetensors"
    )
    m, marks = job.method.markers.latents, tiny_base.placeholder_ids
    prompts = job.method.base_prompts(job)
    for example, ids in zip(job.examples, prompts, strict=True):
        assert ids == job.base_renderer.base_ids(example, 0) + [marks.bot] + [marks.unk] * m + [marks.eot]
    job.method.prepare(job)
    captured = {}

    def fake_generate(model, ids, mask, seeds, config, stop_ids, pad_id, inputs_embeds=None, progress=None):
        captured.update(ids=ids, mask=mask, embeds=inputs_embeds)
        return []

    monkeypatch.setattr(ev, "generate", fake_generate)
    ev.run_batch(job, [ev.Row(i, 41, 0) for i in range(3)], prompts, config=None)
    ids, mask, embeds = captured["ids"], captured["mask"], captured["embeds"]
    model = job.base.model  # the merged adapter
    own = model.get_input_embeddings()(ids)
    for row in range(3):
        real = mask[row] == 1
        row_embeds = embeds[row][real][None]
        row_ids = ids[row][real]
        slot = (row_ids == marks.unk).nonzero().flatten()
        assert len(slot) == m and int(slot[-1]) == len(row_ids) - 2  # the prompt ends with the span
        torch.testing.assert_close(row_embeds[0, slot[0] - 1], job.method.markers.begin)
        torch.testing.assert_close(row_embeds[0, slot[-1] + 1], job.method.markers.end)
        for p in slot.tolist():  # independent: one full forward of the unpadded row per position
            with torch.no_grad():
                previous = model.base_model(inputs_embeds=row_embeds[:, :p]).last_hidden_state[0, -1]
            torch.testing.assert_close(row_embeds[0, p], previous, rtol=1e-5, atol=1e-5)
        keep = torch.ones(len(row_ids), dtype=torch.bool)
        keep[slot[0] - 1 : slot[-1] + 2] = False
        assert torch.equal(row_embeds[0][keep], own[row][real][keep])  # the prompt's own embeddings


def test_coconut_predictions_do_not_depend_on_batch_size(
    coconut_adapter, tiny_base, gsm8k_examples, tmp_path
):
    adapter = coconut_adapter / "adapter_model.safetensors"
    outputs = [
        run_eval(make_job("coconut", tiny_base, gsm8k_examples, size, adapter), tmp_path / str(size))
        for size in (1, 5)
    ]
    assert outputs[0] == outputs[1]
    seed41, seed42 = outputs[0]
    assert [r["output"] for r in seed41] != [r["output"] for r in seed42]
