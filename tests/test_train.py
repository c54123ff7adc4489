"""Projector training on tiny random models: masking, frozen models, equivalences, determinism, resume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import softcot.methods.softcot as softcot_method
import softcot.models
from softcot.commands import train as train_command
from softcot.errors import ConfigError, DataError
from softcot.io import write_jsonl_atomic
from softcot.methods.softcot import batch_loss, batch_thoughts, make_batch
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.thoughts import Projector, base_embeddings, load_projector, splice_thoughts
from softcot.training import loop
from softcot.training.losses import IGNORE, lm_loss_sum
from softcot.training.pair_data import compute_states, encode_training_data

REPO = Path(__file__).resolve().parent.parent
N = 4
SETTINGS = {
    "prompt_set": "paper",
    "num_thought_tokens": N,
    "lr": 1e-2,  # large, so that a few steps visibly lower the loss of a random model
    "batch_size": 2,
    "grad_accum": 2,
    "epochs": 3,
    "max_grad_norm": 1.0,
    "seed": 0,
    "projection_master_dtype": "fp32",
    "projection_center": "none",
    "drop_last_train_token": False,
    "limit": None,
    "max_length": 1024,
    "overlong": "error",
    "kind": "softcot",
    "pair": {"assistant": "gemma-3-270m", "base": "smollm2-135m-instruct"},
    "option_format": None,
}


@pytest.fixture(scope="module")
def paper():
    return load_prompt_set("paper")


@pytest.fixture
def data(paper, tiny_base, tiny_assistant, gsm8k_examples):
    return encode_training_data(
        gsm8k_examples,
        PromptRenderer(paper, tiny_base, "{letter}){text}"),
        PromptRenderer(paper, tiny_assistant, "{letter}){text}"),
        N,
        drop_last_token=False,
        max_length=1024,
        source="train.jsonl",
    )


def test_labels_supervise_exactly_the_assistant_turn(paper, tiny_base, data, gsm8k_examples):
    batch = make_batch(tiny_base, data, [0, 3, 5], N)
    for row, index in enumerate(batch.indices):
        supervised = batch.ids[row][batch.labels[row] != IGNORE]
        target = paper.target("gsm8k", gsm8k_examples[index], gsm8k_examples[index]["question"])
        assert tiny_base.tokenizer.decode(supervised) == "\n<|im_start|>assistant\n" + target + "<|im_end|>\n"


def test_gradients_reach_only_the_projection(tiny_base, tiny_assistant, data):
    states = compute_states(tiny_assistant, data, range(len(data)), N, 3)
    projector = Projector.seeded(48, 32, seed=0)
    batch = make_batch(tiny_base, data, [0, 1], N)
    loss, count = batch_loss(tiny_base, projector, batch, states[[0, 1]])
    (loss / count).backward()
    assert projector.weight.grad.abs().sum() > 0 and projector.bias.grad.abs().sum() > 0
    for model in (tiny_base.model, tiny_assistant.model):
        assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def reference_loss(model, embeds, mask, labels):
    """The textbook causal-LM loss: the model's own full logits, shifted, summed over labels."""
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="sum"
    )


@pytest.mark.parametrize("supervised_only", [True, False])
@pytest.mark.parametrize("prompt_without_grad", [True, False])
def test_fast_loss_paths_equal_the_full_logits_loss_and_gradient(
    tiny_base, tiny_assistant, data, supervised_only, prompt_without_grad
):
    states = compute_states(tiny_assistant, data, range(len(data)), N, 6)[[1, 2, 4]]
    batch = make_batch(tiny_base, data, [1, 2, 4], N)
    expected_projector = Projector.seeded(48, 32, seed=0)
    embeds = splice_thoughts(
        base_embeddings(tiny_base.model, batch.ids), batch.starts, expected_projector(states)
    )
    expected = reference_loss(tiny_base.model, embeds, batch.mask, batch.labels)
    expected.backward()

    projector = Projector.seeded(48, 32, seed=0)
    loss, count = batch_loss(tiny_base, projector, batch, states, supervised_only, prompt_without_grad)
    loss.backward()
    assert count == int((batch.labels != IGNORE).sum()) > 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(projector.weight.grad, expected_projector.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(projector.bias.grad, expected_projector.bias.grad, rtol=1e-4, atol=1e-6)


def test_positions_run_without_autograd_must_not_be_supervised(tiny_base, data):
    batch = make_batch(tiny_base, data, [0], N)
    embeds = base_embeddings(tiny_base.model, batch.ids)
    first_label = int((batch.labels[0] != IGNORE).nonzero()[0])
    with pytest.raises(ValueError, match="without autograd"):
        lm_loss_sum(tiny_base.model, embeds, batch.mask, batch.labels, frozen=first_label)


def test_cached_and_uncached_assistant_states_give_the_same_loss(tiny_base, tiny_assistant, data):
    cached = compute_states(tiny_assistant, data, range(len(data)), N, 6)  # one batch of all six
    batch = make_batch(tiny_base, data, [4, 0], N)
    projector = Projector.seeded(48, 32, seed=0)
    with torch.no_grad():
        from_cache, _ = batch_loss(
            tiny_base, projector, batch, batch_thoughts(tiny_assistant, data, [4, 0], N, cached)
        )
        on_the_fly, _ = batch_loss(
            tiny_base, projector, batch, batch_thoughts(tiny_assistant, data, [4, 0], N, None)
        )
    torch.testing.assert_close(from_cache, on_the_fly, rtol=1e-5, atol=1e-4)


def test_too_long_sequences_are_an_error_naming_the_example(paper, tiny_base, tiny_assistant, gsm8k_examples):
    with pytest.raises(
        DataError, match=r"train.jsonl: example 'gsm8k-train-0' is \d+ tokens long, over train.max_length=50"
    ):
        encode_training_data(
            gsm8k_examples,
            PromptRenderer(paper, tiny_base, "{letter}){text}"),
            PromptRenderer(paper, tiny_assistant, "{letter}){text}"),
            N,
            False,
            50,
            "train.jsonl",
        )


def test_overlong_sequences_can_be_skipped_and_are_counted(paper, tiny_base, tiny_assistant, gsm8k_examples):
    renderers = [PromptRenderer(paper, m, None) for m in (tiny_base, tiny_assistant)]
    gsm8k_examples = [
        dict(e, question=e["question"] * (1 + 3 * (i % 2))) for i, e in enumerate(gsm8k_examples)
    ]
    lengths = [len(renderers[0].training_sequence(e, N).ids) for e in gsm8k_examples]
    limit = min(lengths)
    data = encode_training_data(gsm8k_examples, *renderers, N, False, limit, "train.jsonl", "skip")
    expected_skips = [e["id"] for e, n in zip(gsm8k_examples, lengths, strict=True) if n > limit]
    assert list(data.skipped) == expected_skips and expected_skips
    assert len(data) == len(gsm8k_examples) - len(expected_skips)
    with pytest.raises(DataError, match="every example is over"):
        encode_training_data(gsm8k_examples, *renderers, N, False, 5, "train.jsonl", "skip")


# --- the command ------------------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_base, tiny_assistant, gsm8k_examples):
    """A prepared gsm8k train file and `load_model` serving the tiny models for the `tiny` pair."""
    write_jsonl_atomic(tmp_path / "data" / "gsm8k" / "train.jsonl", gsm8k_examples)
    models = {"gemma-3-270m": tiny_assistant, "smollm2-135m-instruct": tiny_base}

    def fake_load_model(name, models_dir="results/models", device=None, local_paths=None):
        return models[name]

    monkeypatch.setattr(softcot.models, "load_model", fake_load_model, raising=False)
    return tmp_path


def train_args(
    workspace: Path, out: str, settings: dict, dataset: str, models_dir: str
) -> argparse.Namespace:
    directory = workspace / out / "tiny" / dataset
    return argparse.Namespace(
        pair="tiny",
        dataset=dataset,
        artefact="projector",
        params=str(REPO / "params.yaml"),
        settings=json.dumps(settings),
        train=str(workspace / "data" / dataset / "train.jsonl"),
        models_dir=models_dir,
        threads=None,
        states=str(workspace / "states"),
        checkpoint=str(directory / "projector.safetensors"),
        record=str(directory / "projector.json"),
        local_path=[],
    )


def run_train(
    workspace: Path, out: str = "out", settings: dict | None = None, dataset: str = "gsm8k"
) -> Path:
    assert train_command.run(train_args(workspace, out, settings or SETTINGS, dataset, "unused")) == 0
    return workspace / out / "tiny" / dataset


def test_train_writes_projector_and_record(workspace, tiny_base, tiny_assistant):
    before = {
        name: t.clone() for m in (tiny_base, tiny_assistant) for name, t in m.model.state_dict().items()
    }
    out = run_train(workspace)

    with safe_open(str(out / "projector.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["bias", "weight"] and not f.metadata()
        assert f.get_tensor("weight").shape == (32, 48) and f.get_tensor("bias").shape == (32,)
        assert f.get_tensor("weight").dtype == torch.float32
    record = json.loads((out / "projector.json").read_text())
    assert (
        record["pair"] == "tiny"
        and record["assistant"] == "gemma-3-270m"
        and record["base"] == "smollm2-135m-instruct"
    )
    assert (record["assistant_dim"], record["base_dim"], record["num_thought_tokens"]) == (48, 32, N)
    assert record["settings"] == SETTINGS and record["examples"] == 6 and len(record["data_sha256"]) == 64
    assert record["steps"] == 6 and len(record["epoch_losses"]) == 3  # ceil(6 / (2 x 2)) steps x 3 epochs
    # Every epoch sees the same examples, so its mean loss falls as the projection learns.
    losses = record["epoch_losses"]
    assert record["final_loss"] == losses[-1] < losses[1] < losses[0]
    assert not (out / "resume.pt").exists()
    logged = (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert logged[0] == "step\tloss" and len(logged) == 1 + record["steps"]
    assert float(logged[1].split("\t")[1]) == pytest.approx(record["first_step_loss"])
    # The frozen models are bit-identical after training.
    after = {name: t for m in (tiny_base, tiny_assistant) for name, t in m.model.state_dict().items()}
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_centred_projector_stores_the_statistics_of_its_training_states(workspace):
    out = run_train(workspace, "centred", dict(SETTINGS, projection_center="standardize"))
    cache = workspace / "states" / "gemma-3-270m" / "paper" / "gsm8k" / f"train-n{N}.safetensors"
    with safe_open(str(cache), framework="pt") as f:
        states = f.get_tensor("states").reshape(-1, 48).double()  # every example and slot position
    projector = load_projector(out / "projector.safetensors")
    assert projector.center == "standardize"
    torch.testing.assert_close(projector.center_mean.double(), states.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        projector.center_scale.double(), states.std(0, correction=0), rtol=1e-6, atol=0
    )
    record = json.loads((out / "projector.json").read_text())
    assert record["settings"]["projection_center"] == "standardize"
    # The same run without centring trains another projection from the same start.
    paper = load_projector(run_train(workspace, "paper") / "projector.safetensors")
    assert paper.center == "none" and not torch.equal(paper.weight, projector.weight)


def test_same_seed_gives_byte_identical_outputs_and_reuses_the_state_cache(workspace, monkeypatch):
    first = run_train(workspace, "run1")
    cache = workspace / "states" / "gemma-3-270m" / "paper" / "gsm8k" / f"train-n{N}.safetensors"
    with safe_open(str(cache), framework="pt") as f:
        assert (
            f.metadata()["data_sha256"] == json.loads((first / "projector.json").read_text())["data_sha256"]
        )
        assert f.get_tensor("states").shape == (6, N, 48)

    def must_not_compute(*args, **kwargs):
        raise AssertionError("the cached states should have been reused")

    monkeypatch.setattr(softcot_method, "compute_states", must_not_compute)
    second = run_train(workspace, "run2")
    for name in ("projector.safetensors", "projector.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()

    other_seed = run_train(workspace, "run3", dict(SETTINGS, seed=1))
    assert (other_seed / "projector.safetensors").read_bytes() != (
        first / "projector.safetensors"
    ).read_bytes()


def test_state_cache_is_rebuilt_when_the_data_changes(workspace, gsm8k_examples):
    run_train(workspace)
    edited = [dict(e, question=e["question"] + " Think.") for e in gsm8k_examples]
    write_jsonl_atomic(workspace / "data" / "gsm8k" / "train.jsonl", edited)
    out = run_train(workspace)
    cache = workspace / "states" / "gemma-3-270m" / "paper" / "gsm8k" / f"train-n{N}.safetensors"
    with safe_open(str(cache), framework="pt") as f:
        assert f.metadata()["data_sha256"] == json.loads((out / "projector.json").read_text())["data_sha256"]


def test_resume_after_a_crash_gives_the_uninterrupted_result(workspace, monkeypatch):
    uninterrupted = run_train(workspace, "clean")

    real_step = loop._optimizer_step
    calls = []

    def crash_in_second_epoch(*args):
        calls.append(1)
        if len(calls) == 3:  # first step of epoch 2: epoch 1 is saved in resume.pt
            raise KeyboardInterrupt
        real_step(*args)

    monkeypatch.setattr(loop, "_optimizer_step", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(workspace, "crashed")
    crashed = workspace / "crashed" / "tiny" / "gsm8k"
    assert (crashed / "resume.pt").exists() and not (crashed / "projector.safetensors").exists()

    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    run_train(workspace, "crashed")
    assert not (crashed / "resume.pt").exists()
    for name in ("projector.safetensors", "projector.json", "dvclive/plots/metrics/train/loss.tsv"):
        assert (crashed / name).read_bytes() == (uninterrupted / name).read_bytes()


def test_a_resume_file_of_another_run_is_ignored(workspace, monkeypatch):
    clean = run_train(workspace, "clean")
    real_step = loop._optimizer_step
    calls = []

    def crash_at_third_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_step(*args)

    monkeypatch.setattr(loop, "_optimizer_step", crash_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        run_train(workspace, "mixed", dict(SETTINGS, lr=5e-3))
    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    mixed = run_train(workspace, "mixed")
    assert (mixed / "projector.safetensors").read_bytes() == (clean / "projector.safetensors").read_bytes()


def test_date_understanding_cannot_be_trained(workspace):
    with pytest.raises(ConfigError, match="'date' has no training set.*gsm8k projector"):
        run_train(workspace, dataset="date")


def test_invalid_settings_name_the_key(workspace):
    with pytest.raises(ConfigError, match=r"--settings: invalid train settings:\n  train.lr"):
        run_train(workspace, settings=dict(SETTINGS, lr=-1))
    with pytest.raises(ConfigError, match="'seed' is a required property"):
        run_train(workspace, settings={k: v for k, v in SETTINGS.items() if k != "seed"})
    with pytest.raises(ConfigError, match="lack 'pair'"):
        run_train(workspace, settings={k: v for k, v in SETTINGS.items() if k != "pair"})
    with pytest.raises(ConfigError, match="unknown method kind 'lora-x'"):
        run_train(workspace, settings=dict(SETTINGS, kind="lora-x"))


@pytest.mark.slow
def test_real_tiny_pair_end_to_end(tmp_path):
    """The real tiny pair (materialized models) on a few hand-written GSM8K records."""
    models = REPO / "results" / "models"
    if not all((models / m / "config.json").exists() for m in ("gemma-3-270m", "smollm2-135m-instruct")):
        pytest.skip("tiny models are not materialized (snakemake results/models/...)")
    from conftest import gsm8k_example

    write_jsonl_atomic(tmp_path / "data" / "gsm8k" / "train.jsonl", [gsm8k_example(i) for i in range(4)])
    settings = dict(SETTINGS, lr=2e-5, batch_size=2, grad_accum=1, epochs=1, num_thought_tokens=32)
    args = train_args(tmp_path, "out", settings, "gsm8k", str(models))
    assert train_command.run(args) == 0
    with safe_open(str(tmp_path / "out" / "tiny" / "gsm8k" / "projector.safetensors"), framework="pt") as f:
        assert f.get_tensor("weight").shape == (576, 640) and f.get_tensor("bias").shape == (576,)
