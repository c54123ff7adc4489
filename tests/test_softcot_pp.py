"""SoftCoT++ and SoftCoT-P on tiny random models: the K chains, their training (any batch size,
gradients to the [INI] embeddings, frozen models), the contrastive term against an independent
computation, the K x R vote and batch invariance of evaluation (protocol §12, §14 rows 18-21)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import softcot.models
from softcot import evaluate as ev
from softcot.chains import ScaledProjector, chain_states, load_scaled_projector
from softcot.commands import train as train_command
from softcot.config import Config, check_train_settings
from softcot.errors import ConfigError, ModelError
from softcot.io import load_jsonl, write_jsonl_atomic
from softcot.methods import method_class
from softcot.methods import softcot_pp as pp
from softcot.methods import softcot_pp_ini as ini
from softcot.methods.catalog import artefacts, method_spec
from softcot.methods.softcot import batch_loss, make_batch
from softcot.models.registry import get_spec
from softcot.plan import Plan
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots
from softcot.records import all_rows, stream_sample
from softcot.thoughts import Projector, load_projector, right_pad, save_projector
from softcot.training import loop
from softcot.training.loop import Step
from softcot.training.losses import IGNORE
from softcot.training.pair_data import encode_training_data

REPO = Path(__file__).resolve().parent.parent
N = 3  # thought tokens in training here
EVAL_N = 2
K = 3
COMMON = {
    "prompt_set": "paper",
    "num_thought_tokens": N,
    "lr": 1e-2,
    "batch_size": 4,
    "grad_accum": 1,
    "epochs": 2,
    "max_grad_norm": 1.0,
    "seed": 0,
    "projection_master_dtype": "fp32",
    "drop_last_train_token": False,
    "limit": None,
    "max_length": 1024,
    "overlong": "error",
    "num_scaling_times": K,
    "train_ini": True,
    "chain_loss_reduction": "sum",
    # The tiny fixtures are Llama-shaped stand-ins named after the gemma3/smollm2 backbones.
    "ini_rows": {"gemma3": 20, "smollm2": 30},
    "ini_init": "rows",
    "pair": {"assistant": "gemma-3-270m", "base": "smollm2-135m-instruct"},
    "option_format": None,
}
NCE = dict(COMMON, kind="softcot-pp", contrastive_temperature=0.05, contrastive_dropout=0.5)
SCALING = dict(COMMON, kind="softcot-pp-scaling")


@pytest.fixture(scope="module")
def paper():
    return load_prompt_set("paper")


@pytest.fixture
def data(paper, tiny_base, tiny_assistant, gsm8k_examples):
    return encode_training_data(
        gsm8k_examples,
        PromptRenderer(paper, tiny_base, None),
        PromptRenderer(paper, tiny_assistant, None),
        N,
        drop_last_token=False,
        max_length=1024,
        source="train.jsonl",
    )


def module_for(tiny_base, tiny_assistant, chains: int = K, seed: int = 0) -> ScaledProjector:
    _, rows = ini.ini_rows(tiny_assistant, dict(COMMON, num_scaling_times=chains))
    return ScaledProjector.initialised(rows, tiny_base.model.config.hidden_size, seed, torch.float32)


def assistant_batch(tiny_assistant, data, indices):
    ids, mask = right_pad([data.assistant_ids[i] for i in indices], tiny_assistant.pad_id)
    starts = locate_assistant_slots(
        ids, mask, tiny_assistant.placeholder_ids, N, [data.example_ids[i] for i in indices]
    )
    return ids, mask, starts


# --- the chains ----------------------------------------------------------------------------------
def test_ini_rows_are_the_assistants_own_embeddings(tiny_assistant):
    first, rows = ini.ini_rows(tiny_assistant, COMMON)
    table = tiny_assistant.model.get_input_embeddings().weight
    assert first == 20 and torch.equal(rows, table[20 : 20 + K].float())
    with pytest.raises(ConfigError, match="no first \\[INI\\] row for backbone 'gemma3'"):
        ini.ini_rows(tiny_assistant, dict(COMMON, ini_rows={"llama": 128011}))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        ini.ini_rows(tiny_assistant, dict(COMMON, ini_rows={"gemma3": len(table) - 1}))


def test_chain_states_are_each_chain_run_alone_and_differ(tiny_base, tiny_assistant, data):
    module = module_for(tiny_base, tiny_assistant)
    ids, mask, starts = assistant_batch(tiny_assistant, data, [0, 1, 2, 3])
    with torch.no_grad():
        shared = chain_states(tiny_assistant.model, ids, mask, starts, N, module.embedding)
        whole = chain_states(tiny_assistant.model, ids, mask, starts, N, module.embedding, share_prefix=False)
    assert shared.shape == (4, K, N, tiny_assistant.model.config.hidden_size)
    torch.testing.assert_close(shared, whole, atol=1e-5, rtol=1e-5)
    # Independently: one unpadded forward per (example, chain) with the slot embeddings replaced.
    embedding = tiny_assistant.model.get_input_embeddings()
    for b in range(4):
        sequence = torch.tensor([data.assistant_ids[b]])
        start = int(starts[b])
        for k in range(K):
            embeds = embedding(sequence).clone()
            embeds[0, start : start + N] = module.embedding[k]
            with torch.no_grad():
                hidden = tiny_assistant.model.base_model(inputs_embeds=embeds).last_hidden_state[0]
            torch.testing.assert_close(shared[b, k], hidden[start : start + N], atol=1e-5, rtol=1e-5)
    # The K chains' thoughts differ (their [INI] rows differ), within every example.
    thoughts = module(shared)
    for b in range(4):
        for i in range(K):
            for j in range(i + 1, K):
                assert not torch.allclose(thoughts[b, i], thoughts[b, j])


# --- the losses ----------------------------------------------------------------------------------
def test_contrastive_term_equals_an_independent_computation():
    torch.manual_seed(0)
    thoughts = torch.randn(2, 3, 2, 5)  # B = 2 examples, K = 3 chains, N = 2, H = 5
    temperature, p = 0.05, 0.5
    losses = pp.contrastive_losses(thoughts, temperature, p, torch.Generator().manual_seed(7))
    # The same dropout masks, drawn again; then cosines, softmax and the loss by plain loops.
    keep = torch.rand(2, 3, 10, generator=torch.Generator().manual_seed(7)) >= p
    for b in range(2):
        s = [thoughts[b, i].flatten() for i in range(3)]
        t = [s[j] * keep[b, j] / (1 - p) for j in range(3)]
        total = 0.0
        for i in range(3):
            logits = [F.cosine_similarity(s[i], t[j], dim=0).item() / temperature for j in range(3)]
            total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
        assert losses[b].item() == pytest.approx(total / 3, rel=1e-5)


def test_lm_loss_over_chains_equals_each_chain_alone(tiny_base, tiny_assistant, data):
    module = module_for(tiny_base, tiny_assistant)
    batch = make_batch(tiny_base, data, [0, 1, 2, 3], N)
    ids, mask, starts = assistant_batch(tiny_assistant, data, batch.indices)
    with torch.no_grad():
        thoughts = module(chain_states(tiny_assistant.model, ids, mask, starts, N, module.embedding))
        embeds = tiny_base.model.get_input_embeddings()(batch.ids)
        together, count = pp.chain_lm_loss_sum(
            tiny_base.model, embeds, batch.mask, batch.labels, batch.starts, thoughts
        )
        alone = 0.0
        for k in range(K):
            chain = Projector(1, 1)  # an identity stand-in: batch_loss projects its input
            chain.forward = lambda states: states  # type: ignore[method-assign]
            loss_sum, tokens = batch_loss(tiny_base, chain, batch, thoughts[:, k])
            alone += loss_sum.item()
    assert count == K * tokens
    assert together.item() == pytest.approx(alone, rel=1e-5)


def test_batch_of_four_trains_the_projection_and_the_ini_embeddings(tiny_base, tiny_assistant, data):
    before = {n: t.clone() for m in (tiny_base, tiny_assistant) for n, t in m.model.state_dict().items()}
    module = module_for(tiny_base, tiny_assistant)
    batch = make_batch(tiny_base, data, [0, 1, 2, 3], N)
    tokens = int((batch.labels[:, 1:] != IGNORE).sum())
    share = pp.step_loss(
        tiny_base,
        tiny_assistant,
        module,
        data,
        batch,
        NCE,
        True,
        None,
        Step(index=0, tokens=tokens, examples=4, seed=0),
    )
    loss, lm, cl = share.value, share.parts["lm"], share.parts["contrastive"]
    loss.backward()
    assert math.isfinite(loss.item()) and lm > 0 and cl > 0
    assert loss.item() == pytest.approx(lm + cl)
    for parameter in (module.weight, module.bias, module.embedding):
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all())
        assert parameter.grad.abs().sum() > 0
    for model in (tiny_base.model, tiny_assistant.model):
        assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    after = {n: t for m in (tiny_base, tiny_assistant) for n, t in m.model.state_dict().items()}
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_mean_reduction_divides_the_lm_loss_by_k(tiny_base, tiny_assistant, data):
    module = module_for(tiny_base, tiny_assistant)
    batch = make_batch(tiny_base, data, [0, 1], N)
    tokens = int((batch.labels[:, 1:] != IGNORE).sum())
    losses = {}
    for reduction in ("sum", "mean"):
        settings = dict(SCALING, chain_loss_reduction=reduction)
        with torch.no_grad():
            losses[reduction] = pp.step_loss(
                tiny_base,
                tiny_assistant,
                module,
                data,
                batch,
                settings,
                False,
                None,
                Step(index=0, tokens=tokens, examples=2, seed=0),
            ).value
    assert losses["mean"].item() == pytest.approx(losses["sum"].item() / K, rel=1e-6)


# --- the training command ------------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_base, tiny_assistant, gsm8k_examples):
    write_jsonl_atomic(tmp_path / "data" / "gsm8k" / "train.jsonl", gsm8k_examples)
    models = {"gemma-3-270m": tiny_assistant, "smollm2-135m-instruct": tiny_base}

    def fake_load_model(name, models_dir="results/models", device=None, local_paths=None):
        return models[name]

    monkeypatch.setattr(softcot.models, "load_model", fake_load_model, raising=False)
    return tmp_path


@pytest.fixture
def equal_rows_assistant(tiny_assistant):
    """A copy of the tiny assistant (a random Llama) whose rows 20..22, its [INI] rows here, are all
    zero, as public reports say Llama 3's never-trained reserved rows are."""
    model = copy.deepcopy(tiny_assistant.model)
    with torch.no_grad():
        model.get_input_embeddings().weight[20 : 20 + K] = 0.0
    return dataclasses.replace(tiny_assistant, model=model)


def use_assistant(monkeypatch, assistant, tiny_base) -> None:
    models = {"gemma-3-270m": assistant, "smollm2-135m-instruct": tiny_base}
    monkeypatch.setattr(
        softcot.models, "load_model", lambda name, *args, **kwargs: models[name], raising=False
    )


def run_train(workspace: Path, settings: dict, out: str = "out") -> Path:
    artefact = method_spec(settings["kind"]).artefact.name
    directory = workspace / out
    args = argparse.Namespace(
        pair="tiny",
        dataset="gsm8k",
        artefact=artefact,
        params=str(REPO / "params.yaml"),
        settings=json.dumps(settings),
        train=str(workspace / "data" / "gsm8k" / "train.jsonl"),
        models_dir="unused",
        threads=None,
        states=str(workspace / "states"),
        checkpoint=str(directory / f"{artefact}.safetensors"),
        record=str(directory / f"{artefact}.json"),
        local_path=[],
    )
    assert train_command.run(args) == 0
    return directory


def test_training_writes_projection_and_trained_ini(workspace, tiny_base, tiny_assistant):
    before = {n: t.clone() for m in (tiny_base, tiny_assistant) for n, t in m.model.state_dict().items()}
    out = run_train(workspace, NCE)
    with safe_open(str(out / "nce-projector.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["bias", "embedding", "weight"] and not f.metadata()
        assert f.get_tensor("embedding").shape == (K, 48) and f.get_tensor("weight").shape == (32, 48)
        embedding = f.get_tensor("embedding")
    _, rows = ini.ini_rows(tiny_assistant, COMMON)
    assert not torch.equal(embedding, rows)  # train_ini: the [INI] embeddings moved
    record = json.loads((out / "nce-projector.json").read_text())
    assert record["settings"] == NCE and record["contrastive"] and record["num_scaling_times"] == K
    assert record["steps"] == 4 and len(record["epoch_losses"]) == 2  # ceil(6 / 4) x 2 epochs
    assert record["ini_max_abs_change"] > 0 and record["assistant_state_cache"] is None
    assert all(math.isfinite(x) for x in record["epoch_losses"])
    assert all(c > 0 for c in record["step_contrastive_losses"])
    after = {n: t for m in (tiny_base, tiny_assistant) for n, t in m.model.state_dict().items()}
    assert all(torch.equal(before[n], after[n]) for n in before)
    # The initial rows' distances, relative to the table's median row norm, computed independently.
    table = tiny_assistant.model.get_input_embeddings().weight.float()
    median = table.norm(dim=1).median()
    expected = torch.cdist(rows, rows) / median
    assert record["ini_init"] == "rows" and record["ini_first_row"] == 20 and len(record["ini_tokens"]) == K
    assert record["ini_reference_norm"] == pytest.approx(median.item(), rel=1e-5)
    assert torch.allclose(torch.tensor(record["ini_pairwise_distances"]), expected, rtol=1e-3, atol=1e-6)
    off_diagonal = expected[~torch.eye(K, dtype=torch.bool)]
    assert record["ini_min_relative_distance"] == pytest.approx(off_diagonal.min().item(), rel=1e-3)
    assert record["ini_min_relative_distance"] > ini.MIN_INI_DISTANCE


def test_frozen_ini_stays_bit_identical_and_its_states_are_cached(workspace, tiny_assistant, monkeypatch):
    settings = dict(SCALING, train_ini=False)
    out = run_train(workspace, settings, "first")
    with safe_open(str(out / "ini-projector.safetensors"), framework="pt") as f:
        embedding = f.get_tensor("embedding")
    _, rows = ini.ini_rows(tiny_assistant, COMMON)
    assert torch.equal(embedding, rows)
    record = json.loads((out / "ini-projector.json").read_text())
    assert record["ini_max_abs_change"] == 0 and not record["contrastive"]
    assert record["step_contrastive_losses"] == [0.0] * record["steps"]
    cache = workspace / "states" / "gemma-3-270m" / "paper" / "gsm8k" / f"train-n{N}-ini20x{K}.safetensors"
    with safe_open(str(cache), framework="pt") as f:
        assert f.get_tensor("states").shape == (6, K, N, 48)

    def must_not_compute(*args, **kwargs):
        raise AssertionError("the cached chain states should have been reused")

    monkeypatch.setattr(pp, "compute_chain_states", must_not_compute)
    again = run_train(workspace, settings, "second")
    for name in ("ini-projector.safetensors", "ini-projector.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes()


def test_resume_after_a_crash_gives_the_uninterrupted_result(workspace, monkeypatch):
    clean = run_train(workspace, NCE, "clean")
    real_step, calls = loop._optimizer_step, []

    def crash_in_second_epoch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_step(*args)

    monkeypatch.setattr(loop, "_optimizer_step", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(workspace, NCE, "crashed")
    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    crashed = run_train(workspace, NCE, "crashed")
    assert (crashed / "nce-projector.safetensors").read_bytes() == (
        clean / "nce-projector.safetensors"
    ).read_bytes()


def test_settings_are_checked_by_the_methods_keys(workspace):
    with pytest.raises(ConfigError, match="contrastive_temperature"):
        run_train(workspace, dict(SCALING, contrastive_temperature=0.05))
    with pytest.raises(ConfigError, match="chain_loss_reduction"):
        run_train(workspace, dict(NCE, chain_loss_reduction="max"))
    with pytest.raises(ConfigError, match="at least 2 chains"):
        run_train(workspace, dict(NCE, num_scaling_times=1))
    with pytest.raises(ConfigError, match="ini_init"):
        run_train(workspace, dict(NCE, ini_init="zeros"))


# --- distinct [INI] chains -----------------------------------------------------------------------
def test_equal_ini_rows_fail_before_any_training_step(
    workspace, monkeypatch, equal_rows_assistant, tiny_base
):
    use_assistant(monkeypatch, equal_rows_assistant, tiny_base)

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started on equal [INI] rows")

    monkeypatch.setattr(pp, "fit_projection", must_not_train)
    for settings, section in ((NCE, "nce-projector"), (dict(SCALING, train_ini=False), "ini-projector")):
        with pytest.raises(ConfigError) as error:
            run_train(workspace, settings)
        message = str(error.value)
        tokens = tiny_base.tokenizer.convert_ids_to_tokens([20, 21, 22])
        assert f"rows 20 ({tokens[0]}) = 21 ({tokens[1]}) = 22 ({tokens[2]}) are equal" in message
        assert "assistant tiny-assistant" in message and f"train.{section}.ini_rows.gemma3 = 20" in message
        assert (
            f"train.{section}.ini_init: mean_noise" in message and "smallest relative distance 0" in message
        )
        assert "r = e[20:23]" in message and "M.from_pretrained('unused/tiny-assistant')" in message
    assert not (workspace / "out").exists() and not (workspace / "states").exists()


def test_the_confirmation_line_loads_the_hub_model_at_its_revision(equal_rows_assistant):
    llama = dataclasses.replace(equal_rows_assistant, spec=get_spec("llama-3.2-1b-instruct"))
    with pytest.raises(ConfigError) as error:
        ini.check_distinct_ini(llama, NCE, 128011, torch.zeros(K, K), Path("results/models"))
    message = str(error.value)
    assert "rows 128011 = 128012 = 128013 are equal" in message  # the tiny tokenizer has no such tokens
    assert "train.nce-projector.ini_rows.llama = 128011" in message
    assert (
        "M.from_pretrained('meta-llama/Llama-3.2-1B-Instruct', "
        "revision='9213176726f574b556790deb65791e0c5aa438b6').get_input_embeddings().weight.float(); "
        "r = e[128011:128014]; print(torch.cdist(r, r) / e.norm(dim=1).median())"
    ) in message


def test_nearly_equal_rows_fail_and_rows_just_apart_pass(tiny_assistant):
    direction = torch.nn.functional.normalize(
        torch.randn(48, generator=torch.Generator().manual_seed(0)), dim=0
    )
    base = torch.ones(48)
    for gap, fails in ((0.5 * ini.MIN_INI_DISTANCE, True), (2 * ini.MIN_INI_DISTANCE, False)):
        rows = torch.stack([base, base + gap * 3.0 * direction, base + 5 * direction])
        distances = ini.relative_distances(rows, reference_norm=3.0)
        assert distances[0, 1].item() == pytest.approx(gap, rel=1e-5)
        if fails:
            with pytest.raises(
                ConfigError, match="rows 20 \\(.*\\) = 21 \\(.*\\) are equal or nearly so \\(within 0.01"
            ):
                ini.check_distinct_ini(tiny_assistant, NCE, 20, distances, Path("m"))
        else:
            ini.check_distinct_ini(tiny_assistant, NCE, 20, distances, Path("m"))


def test_mean_noise_trains_on_equal_rows_and_gives_distinct_chains(
    workspace, monkeypatch, equal_rows_assistant, tiny_base, data
):
    use_assistant(monkeypatch, equal_rows_assistant, tiny_base)
    # Fixed [INI] (train_ini: false): the checkpoint holds exactly the mean_noise rows.
    settings = dict(SCALING, train_ini=False, ini_init="mean_noise")
    out = run_train(workspace, settings, "fixed")
    module = load_scaled_projector(out / "ini-projector.safetensors")
    table = equal_rows_assistant.model.get_input_embeddings().weight.float()
    median = table.norm(dim=1).median().item()
    expected = table.mean(0) + ini.MEAN_NOISE_SCALE * median / math.sqrt(48) * torch.randn(
        K, 48, generator=torch.Generator().manual_seed(pp_noise_seed(settings["seed"]))
    )
    torch.testing.assert_close(module.embedding.detach(), expected, rtol=1e-5, atol=1e-6)
    record = json.loads((out / "ini-projector.json").read_text())
    assert (
        record["ini_init"] == "mean_noise"
        and record["ini_first_row"] is None
        and record["ini_tokens"] is None
    )
    # K independent draws of noise of norm ~0.1 x the median: about 0.1 x sqrt(2) apart.
    assert 0.1 < record["ini_min_relative_distance"] < 0.2
    cache = (
        workspace
        / "states"
        / "gemma-3-270m"
        / "paper"
        / "gsm8k"
        / f"train-n{N}-ini-mean-noise-s0x{K}.safetensors"
    )
    assert cache.is_file()
    # The chains' thoughts differ within every example.
    ids, mask, starts = assistant_batch(equal_rows_assistant, data, [0, 1, 2, 3])
    with torch.no_grad():
        thoughts = module(chain_states(equal_rows_assistant.model, ids, mask, starts, N, module.embedding))
    for b in range(4):
        for i in range(K):
            for j in range(i + 1, K):
                assert not torch.allclose(thoughts[b, i], thoughts[b, j])
    # Trained [INI] with the contrastive term: trains, and the chains stay apart.
    out = run_train(workspace, dict(NCE, ini_init="mean_noise"), "trained")
    record = json.loads((out / "nce-projector.json").read_text())
    assert record["steps"] == 4 and record["ini_max_abs_change"] > 0
    embedding = load_scaled_projector(out / "nce-projector.safetensors").embedding.detach()
    assert (
        ini.relative_distances(embedding, median)[~torch.eye(K, dtype=torch.bool)].min()
        > ini.MIN_INI_DISTANCE
    )


def pp_noise_seed(seed: int) -> int:
    """The mean_noise generator's seed, derived independently of softcot_pp's code path."""
    return int.from_bytes(hashlib.sha256(f"ini mean_noise\x1f{seed}".encode()).digest()[:8], "big") >> 1


def test_mean_noise_rows_are_seeded_and_leave_the_global_rng_alone():
    mean = torch.linspace(-1, 1, 64)
    state = torch.random.get_rng_state()
    first = ini.mean_noise_rows(mean, 2.0, 4, seed=42)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, ini.mean_noise_rows(mean, 2.0, 4, seed=42))
    assert not torch.equal(first, ini.mean_noise_rows(mean, 2.0, 4, seed=43))
    noise = (first - mean).norm(dim=1) / 2.0
    assert torch.allclose(noise, torch.full_like(noise, ini.MEAN_NOISE_SCALE), rtol=0.3)


# --- checkpoints ---------------------------------------------------------------------------------
def test_softcot_and_softcot_pp_checkpoints_are_not_interchangeable(tmp_path, tiny_base, tiny_assistant):
    scaled, plain = tmp_path / "scaled.safetensors", tmp_path / "plain.safetensors"
    save_projector(scaled, module_for(tiny_base, tiny_assistant))
    save_projector(plain, Projector(48, 32))
    with pytest.raises(ModelError, match="a SoftCoT projector \\(no \\[INI\\] embeddings\\)"):
        load_scaled_projector(plain)
    with pytest.raises(ModelError, match="SoftCoT\\+\\+ checkpoint"):
        load_projector(scaled)
    loaded = load_scaled_projector(scaled)
    assert loaded.chains == K and loaded.in_features == 48 and loaded.out_features == 32


# --- evaluation ----------------------------------------------------------------------------------
def make_job(method, tiny_base, tiny_assistant, examples, batch_size=4, artefact=None, **overrides):
    settings = Plan(Config.load()).evaluate("tiny", "gsm8k", method).settings
    settings.update(seeds=[41, 42], max_new_tokens=5, limit=None, num_thought_tokens=EVAL_N)
    settings.update(overrides)
    kind = settings["kind"]
    job = ev.Job(
        "tiny",
        "gsm8k",
        method,
        settings,
        examples,
        tiny_base,
        PromptRenderer(load_prompt_set("paper"), tiny_base, None),
        method_class(kind)(),
        batch_size,
    )
    job.assistant = tiny_assistant
    job.assistant_renderer = PromptRenderer(load_prompt_set("paper"), tiny_assistant, None)
    if kind in ("softcot-pp", "softcot-pp-scaling"):
        job.artefact = artefact if artefact is not None else module_for(tiny_base, tiny_assistant)
    else:
        job.artefact = Projector.seeded(48, 32, seed=0)
    return job


def run_eval(job, out_dir: Path) -> list[list[dict]]:
    seeds = job.settings["seeds"]
    ev.evaluate(
        job, [out_dir / f"seed{s}.jsonl" for s in seeds], [out_dir / f"seed{s}.metrics.json" for s in seeds]
    )
    return [load_jsonl(out_dir / f"seed{s}.jsonl") for s in seeds]


def test_the_vote_counts_k_times_r_answers(tiny_base, tiny_assistant, gsm8k_examples, tmp_path):
    job = make_job("softcot-pp-sc", tiny_base, tiny_assistant, gsm8k_examples[:3], chains=K, samples=2)
    assert len(all_rows(job)) == 3 * 2 * K * 2
    from softcot.voting import vote

    for records in run_eval(job, tmp_path):
        for record in records:
            assert len(record["samples"]) == len(record["outputs"]) == K * 2
            assert record["prediction"] == vote(record["samples"], job.settings["vote"])


def test_chains_share_the_base_prompt_and_differ_in_their_thoughts(tiny_base, tiny_assistant, gsm8k_examples):
    job = make_job("softcot-pp", tiny_base, tiny_assistant, gsm8k_examples[:2], chains=K)
    prompts = job.method.base_prompts(job)
    job.method.prepare(job)
    rows = [ev.Row(0, 41, chain) for chain in range(K)]  # samples = 1: sample index = chain
    ids, mask = ev.left_pad([prompts[0]] * K, tiny_base.pad_id)
    embeds = job.method.input_embeddings(job, rows, ids, mask)
    slot = (ids[0] == tiny_base.placeholder_ids.unk).nonzero().flatten()
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[slot] = False
    for k in range(1, K):
        assert torch.equal(embeds[k, keep], embeds[0, keep])
        assert not torch.allclose(embeds[k, slot], embeds[0, slot])


@pytest.mark.parametrize("method", ["softcot-pp-sc", "softcot-p"])
def test_predictions_do_not_depend_on_batch_size(method, tiny_base, tiny_assistant, gsm8k_examples, tmp_path):
    overrides = {"chains": K, "samples": 2} if method == "softcot-pp-sc" else {"chains": K}
    results = [
        run_eval(
            make_job(method, tiny_base, tiny_assistant, gsm8k_examples[:4], batch_size=size, **overrides),
            tmp_path / str(size),
        )
        for size in (1, 7)
    ]
    assert results[0] == results[1]


def test_chains_get_their_own_thoughts_and_generators(tiny_base, tiny_assistant, gsm8k_examples, tmp_path):
    """SoftCoT-P at perturbation 0 is SoftCoT with K x R samples, row for row; perturbed, it differs."""
    examples = gsm8k_examples[:3]
    softcot_sc = run_eval(
        make_job("softcot-sc", tiny_base, tiny_assistant, examples, samples=K), tmp_path / "sc"
    )
    unperturbed = run_eval(
        make_job("softcot-p", tiny_base, tiny_assistant, examples, chains=K, perturbation=0.0),
        tmp_path / "p0",
    )
    perturbed = run_eval(
        make_job("softcot-p", tiny_base, tiny_assistant, examples, chains=K, perturbation=1.0),
        tmp_path / "p1",
    )
    for sc, p0, p1 in zip(softcot_sc, unperturbed, perturbed, strict=True):
        assert [r["outputs"] for r in sc] == [r["outputs"] for r in p0]
        assert [r["outputs"] for r in p1] != [r["outputs"] for r in p0]


def test_the_stream_of_a_row_follows_chain_streams():
    settings = {"samples": 2, "chains": 3}
    assert [stream_sample(settings, s) for s in range(6)] == list(range(6))  # no key: independent
    independent = dict(settings, chain_streams="independent")
    assert [stream_sample(independent, s) for s in range(6)] == list(range(6))
    shared = dict(settings, chain_streams="shared")
    assert [stream_sample(shared, s) for s in range(6)] == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ConfigError, match="chain_streams"):
        stream_sample(dict(settings, chain_streams="global"), 0)


def equal_ini_job(tiny_base, tiny_assistant, examples, **overrides):
    """SoftCoT++ with K chains whose [INI] embeddings are all chain 0's: every chain gets equal thoughts."""
    module = module_for(tiny_base, tiny_assistant)
    with torch.no_grad():
        module.embedding.copy_(module.embedding[:1].expand_as(module.embedding))
    return make_job(
        "softcot-pp-sc",
        tiny_base,
        tiny_assistant,
        examples,
        artefact=module,
        chains=K,
        samples=2,
        **overrides,
    )


@pytest.mark.parametrize("streams", ["shared", "independent"])
def test_shared_streams_give_equal_chains_equal_samples(
    streams, tiny_base, tiny_assistant, gsm8k_examples, tmp_path
):
    """With shared streams (the reference's re-seeding), sample r of chains fed equal thoughts is the
    same answer; with independent ones (the default) the chains sample apart."""
    job = equal_ini_job(tiny_base, tiny_assistant, gsm8k_examples[:2], chain_streams=streams)
    samples = job.settings["samples"]
    outputs = [record["outputs"] for records in run_eval(job, tmp_path) for record in records]
    by_chain = [[row[c * samples : (c + 1) * samples] for c in range(K)] for row in outputs]
    same = all(chains[c] == chains[0] for chains in by_chain for c in range(1, K))
    assert same == (streams == "shared")


def test_shared_streams_do_not_depend_on_batch_or_shard(tiny_base, tiny_assistant, gsm8k_examples, tmp_path):
    examples = gsm8k_examples[:3]
    rows = len(all_rows(make_job("softcot-pp-sc", tiny_base, tiny_assistant, examples, chains=K, samples=2)))
    whole = [
        run_eval(
            make_job(
                "softcot-pp-sc",
                tiny_base,
                tiny_assistant,
                examples,
                batch_size=size,
                chains=K,
                samples=2,
                chain_streams="shared",
            ),
            tmp_path / str(size),
        )
        for size in (1, rows)
    ]
    assert whole[0] == whole[1]
    parts = [
        run_eval(
            make_job(
                "softcot-pp-sc", tiny_base, tiny_assistant, part, chains=K, samples=2, chain_streams="shared"
            ),
            tmp_path / f"part{i}",
        )
        for i, part in enumerate((examples[:1], examples[1:]))
    ]
    assert whole[0] == [first + rest for first, rest in zip(*parts, strict=True)]


def test_perturbation_is_relative_to_each_thought(tiny_base):
    thoughts = torch.randn(2, 3, 64) * torch.tensor([1.0, 100.0]).view(2, 1, 1)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    noise = pp.perturb(thoughts, 0.1, generators) - thoughts
    ratio = noise.norm(dim=-1) / thoughts.norm(dim=-1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.1), rtol=0.35)


def test_loading_checks_the_chain_count(tmp_path, tiny_base, tiny_assistant, gsm8k_examples):
    path = tmp_path / "nce-projector.safetensors"
    save_projector(path, module_for(tiny_base, tiny_assistant, chains=2))
    job = make_job("softcot-pp", tiny_base, tiny_assistant, gsm8k_examples[:1], chains=3)
    with pytest.raises(ConfigError, match="3 chains, but .* holds only 2"):
        job.method.load_artefact(job, path)
    job.settings["chains"] = 2
    job.method.load_artefact(job, path)
    assert job.artefact.chains == 2 and not any(p.requires_grad for p in job.artefact.parameters())


# --- the plan ------------------------------------------------------------------------------------
def test_each_artefact_trains_with_its_own_section_only():
    plan = Plan(Config.load())
    assert artefacts()["nce-projector"].trained_by == "softcot-pp"
    assert artefacts()["ini-projector"].trained_by == "softcot-pp-scaling"
    assert artefacts()["projector"].trained_by == "softcot"  # SoftCoT-P evaluates SoftCoT's projector
    nce = plan.train("nce-projector", "tiny", "gsm8k")
    scaling = plan.train("ini-projector", "tiny", "gsm8k")
    assert nce.outputs["checkpoint"] == "results/nce-projectors/tiny/gsm8k/nce-projector.safetensors"
    assert {"contrastive_temperature", "contrastive_dropout"} <= set(nce.settings)
    assert not {"contrastive_temperature", "contrastive_dropout"} & set(scaling.settings)
    assert "num_scaling_times" not in plan.train("projector", "tiny", "gsm8k").settings
    assert nce.settings["ini_init"] == scaling.settings["ini_init"] == "rows"  # the paper's
    check_train_settings(nce.settings, "plan")
    check_train_settings(scaling.settings, "plan")


def test_the_table_resolves_for_both_presets():
    for preset, chains in (("tiny", 2), ("paper", 10)):
        plan = Plan(Config.load(overrides={"preset": preset}))
        spec = plan.table_spec("softcot_pp")
        assert len(spec["rows"]) == 12 and spec["baseline"] == "cot-sc"
        step = plan.evaluate(spec["rows"][-1]["pair"], "gsm8k", "softcot-pp-sc")
        assert step.settings["chains"] == chains and step.inputs["artefact"].endswith(
            "nce-projector.safetensors"
        )
    paper = Plan(Config.load(overrides={"preset": "paper"}))
    # Qwen3 (protocol §8): 4096 new tokens, 1024 on DU and StrategyQA; the other pairs keep 1024.
    assert paper.evaluate("qwen3", "gsm8k", "softcot-pp").settings["max_new_tokens"] == 4096
    assert paper.evaluate("qwen3", "date", "softcot-pp").settings["max_new_tokens"] == 1024
    assert paper.evaluate("qwen3", "strategyqa", "cot-sc-pp").settings["max_new_tokens"] == 1024
    assert paper.evaluate("llama", "gsm8k", "softcot-pp").settings["max_new_tokens"] == 1024
    assert paper.evaluate("qwen3", "date", "softcot-p").inputs["artefact"] == (
        "results/projectors/qwen3/gsm8k/projector.safetensors"
    )


def test_rows_with_equal_ids_share_a_prefill_only_with_equal_embeddings():
    from softcot.generate import _distinct_rows

    ids = torch.tensor([[1, 2], [1, 2], [1, 2], [3, 4], [1, 2]])
    mask = torch.ones_like(ids)
    embeds = torch.zeros(5, 2, 3)
    embeds[2] += 1.0  # another chain of the same example
    embeds[3] += 2.0
    first, inverse = _distinct_rows(ids, mask, embeds)
    assert first.tolist() == [0, 2, 3] and inverse.tolist() == [0, 0, 1, 2, 0]
    assert torch.equal(embeds[first[inverse]], embeds)
