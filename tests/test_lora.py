"""LoRA fine-tuning on tiny random models: its training sequences, an adapter-only checkpoint over an
untouched base, resume, and an evaluation that really goes through the adapter, batch-invariantly."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import softcot.models
from softcot import evaluate as ev
from softcot.commands import train as train_command
from softcot.config import Config, deep_merge
from softcot.errors import ConfigError
from softcot.io import load_jsonl, write_jsonl_atomic
from softcot.methods import method_class
from softcot.methods.catalog import method_spec
from softcot.methods.lora import cot_sequence, lora_batch
from softcot.plan import Plan
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.training.losses import IGNORE

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "prompt_set": "paper",
    "lr": 1e-2,  # large, so that a few steps visibly move a random model
    "batch_size": 2,
    "grad_accum": 2,
    "epochs": 3,
    "max_grad_norm": 1.0,
    "seed": 0,
    "drop_last_train_token": False,
    "limit": None,
    "max_length": 1024,
    "overlong": "error",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.1,
    "lora_target_modules": ["q_proj", "v_proj"],
    "weight_decay": 0.0,
    "kind": "lora",
    "pair": {"base": "smollm2-135m-instruct"},
    "option_format": None,
}


def serve_tiny_base(tmp_path: Path, monkeypatch, tiny_base, examples: list[dict]) -> Path:
    """A prepared gsm8k train file and `load_model` serving the tiny base for the `tiny` pair."""
    write_jsonl_atomic(tmp_path / "data" / "gsm8k" / "train.jsonl", examples)

    def fake_load_model(name, models_dir="results/models", device=None, local_paths=None):
        assert name == "smollm2-135m-instruct"
        return tiny_base

    monkeypatch.setattr(softcot.models, "load_model", fake_load_model, raising=False)
    return tmp_path


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_base, gsm8k_examples):
    return serve_tiny_base(tmp_path, monkeypatch, tiny_base, gsm8k_examples)


def run_train(
    workspace: Path, out: str = "out", settings: dict | None = None, artefact: str = "lora"
) -> Path:
    """`softcot train` into workspace/out/{artefact}/ (the adapter's file names); returns that folder."""
    directory = workspace / out / artefact
    args = argparse.Namespace(
        pair="tiny",
        dataset="gsm8k",
        artefact=artefact,
        params=str(REPO / "params.yaml"),
        settings=json.dumps(settings or SETTINGS),
        train=str(workspace / "data" / "gsm8k" / "train.jsonl"),
        models_dir="unused",
        threads=None,
        states=str(workspace / "states"),
        checkpoint=str(directory / "adapter_model.safetensors"),
        record=str(directory / "adapter.json"),
        local_path=[],
    )
    assert train_command.run(args) == 0
    return directory


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


# --- training data ---------------------------------------------------------------------------------
def test_training_sequence_is_the_zero_shot_cot_prompt_then_the_assistant_turn(tiny_base, gsm8k_examples):
    paper = load_prompt_set("paper")
    renderer = PromptRenderer(paper, tiny_base, None)
    sequences = [cot_sequence(renderer, e, drop_last_token=False) for e in gsm8k_examples[:3]]
    batch = lora_batch(tiny_base, sequences)
    marks = tiny_base.placeholder_ids
    for row, (example, (prompt, _)) in enumerate(zip(gsm8k_examples, sequences, strict=False)):
        assert prompt == renderer.base_ids(example, 0)  # exactly the evaluation's prompt
        assert not {marks.unk, marks.bot, marks.eot} & set(batch.ids[row].tolist())
        supervised = batch.ids[row][batch.labels[row] != IGNORE]
        target = paper.target("gsm8k", example, example["question"])
        # The loss covers what the model writes at evaluation: the assistant turn, header included.
        assert tiny_base.tokenizer.decode(supervised) == "<|im_start|>assistant\n" + target + "<|im_end|>\n"


# --- training --------------------------------------------------------------------------------------
def test_train_writes_an_adapter_only_checkpoint_and_leaves_the_base_untouched(workspace, tiny_base):
    before = state_of(tiny_base.model)
    out = run_train(workspace)

    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        names = sorted(f.keys())  # noqa: SIM118 (safe_open is not iterable)
        shapes = {name: tuple(f.get_tensor(name).shape) for name in names}
    # Only LoRA's A and B of q_proj and v_proj in each of the 2 layers: nothing of the base.
    assert len(names) == 2 * 2 * 2
    assert all(
        name.endswith((".lora_A.weight", ".lora_B.weight")) and (".q_proj." in name or ".v_proj." in name)
        for name in names
    )
    assert all(4 in shape for shape in shapes.values())  # rank 4
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"], config["bias"]) == (4, 8, 0.1, "none")
    assert config["target_modules"] == ["q_proj", "v_proj"]  # sorted: the same bytes in every process
    record = json.loads((out / "adapter.json").read_text())
    assert record["settings"] == SETTINGS and record["examples"] == 6 and record["base"] == "tiny-base"
    assert record["steps"] == 6 and len(record["epoch_losses"]) == 3  # ceil(6 / (2 x 2)) steps x 3 epochs
    assert record["final_loss"] < record["epoch_losses"][0]
    assert set(record["versions"]) == {"torch", "transformers", "peft"}
    assert not (out / "resume.pt").exists()
    logged = (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert len(logged) == 1 + record["steps"]
    # The base is bit-identical and has its own modules back (no adapter left attached).
    after = tiny_base.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert type(tiny_base.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_same_seed_gives_byte_identical_adapters(workspace):
    first, second = run_train(workspace, "run1"), run_train(workspace, "run2")
    for name in ("adapter_model.safetensors", "adapter_config.json", "adapter.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    other = run_train(workspace, "run3", dict(SETTINGS, seed=1))
    assert (other / "adapter_model.safetensors").read_bytes() != (
        first / "adapter_model.safetensors"
    ).read_bytes()


def crash_at_call(monkeypatch, call: int) -> None:
    """Make the `call`-th gradient clipping (one per optimizer step) raise KeyboardInterrupt."""
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def clip(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)


@pytest.mark.parametrize("artefact", ["lora", "coconut"])
def test_resume_after_a_crash_gives_the_uninterrupted_result(workspace, monkeypatch, artefact):
    settings = dict(SETTINGS, kind=artefact)
    if artefact == "coconut":  # stages 0, 1, 2 over the 3 epochs: the crash lands on a stage change
        settings.update(latent_per_step=2, max_latent_stage=1, epochs_per_stage=1, reset_optimizer=True)
    clean = run_train(workspace, "clean", settings, artefact)
    with monkeypatch.context() as patch:
        crash_at_call(patch, 3)  # the first step of epoch 2: epoch 1 is saved in resume.pt
        with pytest.raises(KeyboardInterrupt):
            run_train(workspace, "crashed", settings, artefact)
    crashed = workspace / "crashed" / artefact
    assert (crashed / "resume.pt").exists() and not (crashed / "adapter_model.safetensors").exists()
    run_train(workspace, "crashed", settings, artefact)
    assert not (crashed / "resume.pt").exists()
    files = ["adapter_model.safetensors", "adapter.json", "dvclive/plots/metrics/train/loss.tsv"]
    for name in files + (["markers.safetensors"] if artefact == "coconut" else []):
        assert (crashed / name).read_bytes() == (clean / name).read_bytes()


def test_a_resume_file_of_another_run_is_ignored(workspace, monkeypatch):
    clean = run_train(workspace, "clean")
    with monkeypatch.context() as patch:
        crash_at_call(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            run_train(workspace, "mixed", dict(SETTINGS, lr=5e-3))
    mixed = run_train(workspace, "mixed")
    assert (mixed / "adapter_model.safetensors").read_bytes() == (
        clean / "adapter_model.safetensors"
    ).read_bytes()


def test_invalid_lora_settings_name_the_key(workspace):
    with pytest.raises(ConfigError, match=r"train.lora_r"):
        run_train(workspace, settings=dict(SETTINGS, lora_r=0))
    with pytest.raises(ConfigError, match="'lora_alpha' is a required property"):
        run_train(workspace, settings={k: v for k, v in SETTINGS.items() if k != "lora_alpha"})
    with pytest.raises(ConfigError, match="num_thought_tokens"):  # a key LoRA does not read
        run_train(workspace, settings=dict(SETTINGS, num_thought_tokens=4))


# --- the plan --------------------------------------------------------------------------------------
def test_each_artefact_gets_exactly_the_train_keys_it_reads():
    raw = Config.load().raw
    plan = Plan(Config(raw))
    lora = plan.train("lora", "tiny", "gsm8k")
    coconut = plan.train("coconut", "tiny", "gsm8k")
    assert set(lora.settings) == {"kind", "pair", "option_format", *method_spec("lora").artefact.train_keys}
    assert set(coconut.settings) == {
        "kind",
        "pair",
        "option_format",
        *method_spec("coconut").artefact.train_keys,
    }
    assert lora.settings["pair"] == {"base": "smollm2-135m-instruct"}  # no assistant
    assert lora.outputs == {
        "checkpoint": "results/adapters/tiny/gsm8k/lora/adapter_model.safetensors",
        "record": "results/adapters/tiny/gsm8k/lora/adapter.json",
        "config": "results/adapters/tiny/gsm8k/lora/adapter_config.json",
    }
    assert coconut.outputs["markers"] == "results/adapters/tiny/gsm8k/coconut/markers.safetensors"
    # The projector's paths are unchanged, and its settings hold no section of another artefact.
    projector = plan.train("projector", "tiny", "gsm8k")
    assert projector.outputs["checkpoint"] == "results/projectors/tiny/gsm8k/projector.safetensors"
    assert not {"lora", "coconut", "lora_r"} & set(projector.settings)
    # A section's value reaches its artefact alone; a common key the artefact does not read, nothing.
    edits = {
        "train": {"num_thought_tokens": 8},
        "presets": {"tiny": {"train": {"coconut": {"max_latent_stage": 2}}}},
    }
    changed = Plan(Config(deep_merge(raw, edits)))
    assert changed.train("coconut", "tiny", "gsm8k").settings["max_latent_stage"] == 2
    assert changed.train("lora", "tiny", "gsm8k").settings == lora.settings
    # The section overrides the common keys (the paper's Coconut lr), the preset's section its own.
    paper = Plan(Config(dict(raw, preset="paper")))
    assert paper.train("coconut", "llama", "gsm8k").settings["lr"] == raw["train"]["coconut"]["lr"]
    assert paper.train("lora", "llama", "gsm8k").settings["lr"] == raw["train"]["lr"]
    assert coconut.settings["lr"] == raw["presets"]["tiny"]["train"]["coconut"]["lr"]
    # DU is evaluated with the GSM8K adapters.
    assert plan.evaluate("tiny", "date", "lora").inputs["artefact"] == lora.outputs["checkpoint"]


def test_a_section_key_its_artefact_does_not_read_is_an_error():
    raw = Config.load().raw
    with pytest.raises(ConfigError, match=r"train.lora.max_latent_stage: the lora training does not read"):
        Config(deep_merge(raw, {"train": {"lora": {"max_latent_stage": 2}}}))
    with pytest.raises(ConfigError, match=r"train.lora: .*'lora_rank' was unexpected"):
        Config(deep_merge(raw, {"train": {"lora": {"lora_rank": 2}}}))


# --- evaluation ------------------------------------------------------------------------------------
def owned_copy(loaded):
    """A copy of a session fixture model that an evaluation may merge an adapter into."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


def make_job(kind, base, examples, batch_size=4, artefact: Path | None = None) -> ev.Job:
    settings = Plan(Config.load()).evaluate("tiny", "gsm8k", kind).settings
    settings.update(seeds=[41, 42], max_new_tokens=6, limit=None)
    method = method_class(kind)()
    base = owned_copy(base)
    job = ev.Job(
        "tiny",
        "gsm8k",
        kind,
        settings,
        examples,
        base,
        PromptRenderer(load_prompt_set("paper"), base, None),
        method,
        batch_size,
    )
    if artefact is not None:
        method.load_artefact(job, artefact)
    return job


def run_eval(job: ev.Job, out_dir: Path) -> list[list[dict]]:
    seeds = job.settings["seeds"]
    ev.evaluate(
        job, [out_dir / f"seed{s}.jsonl" for s in seeds], [out_dir / f"seed{s}.metrics.json" for s in seeds]
    )
    return [load_jsonl(out_dir / f"seed{s}.jsonl") for s in seeds]


@pytest.fixture
def adapter(workspace) -> Path:
    return run_train(workspace, "adapter") / "adapter_model.safetensors"


def test_the_adapter_is_applied_at_evaluation(adapter, tiny_base, gsm8k_examples, tmp_path):
    from peft import PeftModel

    job = make_job("lora", tiny_base, gsm8k_examples, artefact=adapter)
    ids = torch.tensor([job.method.base_prompts(job)[0]])
    merged = job.base.model(ids).logits
    # The merged model computes what the base with the adapter attached computes ...
    attached = PeftModel.from_pretrained(copy.deepcopy(tiny_base.model), str(adapter.parent)).eval()
    torch.testing.assert_close(merged, attached(ids).logits, rtol=1e-5, atol=1e-5)
    # ... which is not what the base alone computes, so the predictions differ from Zero-Shot CoT's,
    # whose prompts are the same.
    assert not torch.allclose(merged, tiny_base.model(ids).logits, atol=1e-3)
    cot = make_job("cot", tiny_base, gsm8k_examples)
    assert cot.method.base_prompts(cot) == job.method.base_prompts(job)
    lora_outputs = [r["output"] for seed in run_eval(job, tmp_path / "lora") for r in seed]
    cot_outputs = [r["output"] for seed in run_eval(cot, tmp_path / "cot") for r in seed]
    assert lora_outputs != cot_outputs
    assert job.method.fingerprint_tensors(job)  # the adapter decides a resume's validity


def test_lora_predictions_do_not_depend_on_batch_size(adapter, tiny_base, gsm8k_examples, tmp_path):
    outputs = [
        run_eval(make_job("lora", tiny_base, gsm8k_examples, batch_size, adapter), tmp_path / str(batch_size))
        for batch_size in (1, 5)
    ]
    assert outputs[0] == outputs[1]
