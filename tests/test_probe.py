"""The thought probe: each condition's NLL equals an independent full-sequence computation, the
derangement leaves no example with its own thoughts, the test split never reaches training or
model selection, and the table's numbers can be recomputed from the per-example file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import gsm8k_example

from softcot import stats
from softcot.config import Config, deep_merge
from softcot.errors import ConfigError, DataError, ModelError
from softcot.plan import PROBE_REPORTS, Plan, prepared
from softcot.probe import conditions, heldout, scoring
from softcot.probe import table as probe_table
from softcot.probe.command import _check_record
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots
from softcot.thoughts import Projector, assistant_states

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
N = 2


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(PARAMS.read_text())


# --- the derangement and the split ---------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 17, 100, 1319])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_the_derangement_is_a_permutation_without_a_fixed_point(n, seed):
    order = heldout.derangement(n, seed)
    assert sorted(order) == list(range(n))
    assert all(order[i] != i for i in range(n))
    assert order == heldout.derangement(n, seed)  # fixed by its seed


def test_a_derangement_needs_two_examples():
    with pytest.raises(DataError, match="at least 2"):
        heldout.derangement(1, 0)


def test_the_validation_part_is_the_train_splits_tail_and_disjoint_from_the_fit_part():
    examples = [gsm8k_example(i) for i in range(10)]
    fit, validation = heldout.split_train(examples, 3, "train.jsonl")
    assert fit == examples[:7] and validation == examples[7:]
    assert not {e["id"] for e in fit} & {e["id"] for e in validation}
    with pytest.raises(DataError, match="cannot give 10"):
        heldout.split_train(examples, 10, "train.jsonl")


def test_the_split_refuses_a_test_split():
    examples = [dict(gsm8k_example(i), split="test") for i in range(10)]
    with pytest.raises(DataError, match="splits a train split"):
        heldout.split_train(examples, 3, "test.jsonl")


# --- the test split never enters training or model selection ---------------------------------------
def test_the_probe_projector_trains_on_the_fit_part_only(raw):
    plan = Plan(Config(raw))
    for dataset in plan.probe_spec()["datasets"]:
        split = plan.probe_split(dataset)
        assert split.inputs == {"train": prepared(dataset, "train")}
        trained = plan.probe_train(plan.probe_spec()["pair"], dataset)
        assert trained.inputs["train"] == split.outputs["fit"]
        files = [path for path in trained.inputs.values() if path.endswith(".jsonl")]
        assert files == [split.outputs["fit"]]
        # Scoring the test split reads the test file; nothing upstream of the projector does.
        test = plan.probe(plan.probe_spec()["pair"], dataset, "test")
        assert test.inputs["examples"] == prepared(dataset, "test")
        assert test.inputs["projector"] == trained.outputs["checkpoint"]


def test_model_selection_reads_no_test_file(raw):
    plan = Plan(Config(raw))
    selection = plan.probe_table("thought_probe_validation")
    files = [path for paths in selection.inputs.values() for path in paths]
    assert files and not any("test" in Path(path).parts or path.endswith("test.jsonl") for path in files)
    for dataset in plan.probe_spec()["datasets"]:
        step = plan.probe(plan.probe_spec()["pair"], dataset, "validation")
        assert step.inputs["examples"] == plan.probe_split(dataset).outputs["validation"]
        assert not any(str(path).endswith("test.jsonl") for path in step.inputs.values())
    assert set(PROBE_REPORTS.values()) == {"test", "validation"}


def test_held_out_examples_the_projector_trained_on_are_refused():
    examples = [gsm8k_example(i) for i in range(4)]
    leaked = scoring.ProbeInputs(examples, [gsm8k_example(i) for i in range(3, 8)], "held.jsonl", "fit.jsonl")
    with pytest.raises(DataError, match="1 held-out examples are among"):
        scoring.check_disjoint(leaked)
    # The same question under another id is a leak too.
    renamed = [dict(gsm8k_example(2), id="gsm8k-train-x")]
    with pytest.raises(DataError, match="among the probe projector's training"):
        scoring.check_disjoint(scoring.ProbeInputs(examples, renamed, "held.jsonl", "fit.jsonl"))


def test_the_probe_settings_are_validated(raw):
    bad = deep_merge(raw, {"probe": {"datasets": ["date"]}})
    with pytest.raises(ConfigError, match="'date' has no training split"):
        Config(bad)
    with pytest.raises(ConfigError, match="unknown dataset 'gsm9k'"):
        Config(deep_merge(raw, {"probe": {"presets": {"paper": {"datasets": ["gsm9k"]}}}}))
    with pytest.raises(ConfigError, match="probe.pair: role 'nowhere'"):
        Config(deep_merge(raw, {"probe": {"pair": "nowhere"}}))
    with pytest.raises(ConfigError, match="probe.train"):
        Config(deep_merge(raw, {"probe": {"train": {"learning_rate": 1.0}}}))


def test_the_probe_training_is_the_presets_training_with_the_probes_overrides(raw):
    plan = Plan(Config(raw))
    spec = plan.probe_spec()
    main = plan.train("projector", spec["pair"], "gsm8k").settings
    trained = plan.probe_train(spec["pair"], "gsm8k").settings
    assert set(trained) == set(main)
    overrides = deep_merge(raw["probe"]["train"], raw["probe"]["presets"][plan.preset].get("train", {}))
    assert {k for k in main if main[k] != trained[k]} <= set(overrides)
    # The main projector is another artefact with its own paths.
    assert plan.probe_train(spec["pair"], "gsm8k").outputs["checkpoint"].startswith("results/probe/")


def test_each_centred_projector_is_a_probe_artefact_of_its_own(raw):
    preset = raw["preset"]
    both = Plan(
        Config(deep_merge(raw, {"probe": {"presets": {preset: {"centred": ["mean", "standardize"]}}}}))
    )
    pair = both.probe_spec()["pair"]
    paper = both.probe_train(pair, "gsm8k")
    assert paper.settings["projection_center"] == "none"
    centred = {center: both.probe_train(pair, "gsm8k", center) for center in ("mean", "standardize")}
    for center, step in centred.items():
        assert step.settings == dict(paper.settings, projection_center=center)
        assert step.inputs == paper.inputs  # the same fit part and models
    directories = {Path(s.outputs["checkpoint"]).parent for s in (paper, *centred.values())}
    assert len(directories) == 3  # their resume files and logs never meet
    test = both.probe(pair, "gsm8k", "test")
    assert test.settings["centred"] == ["mean", "standardize"]
    assert test.inputs["centred_projectors"] == [
        centred[c].outputs["checkpoint"] for c in ("mean", "standardize")
    ]
    assert test.inputs["centred_records"] == [centred[c].outputs["record"] for c in ("mean", "standardize")]
    table = both.probe_table("thought_probe")
    assert table.inputs["centred_records"] == test.inputs["centred_records"]
    none = Plan(Config(deep_merge(raw, {"probe": {"presets": {preset: {"centred": []}}}})))
    with pytest.raises(ConfigError, match="'mean' is not among probe.centred"):
        none.probe_train(pair, "gsm8k", "mean")
    assert none.probe(pair, "gsm8k", "test").inputs["centred_projectors"] == []


def test_scoring_refuses_a_record_trained_with_another_centring(tmp_path):
    settings = {"pair": {"assistant": "a", "base": "b"}, "train": {"lr": 0.01, "projection_center": "none"}}
    record = tmp_path / "projector.json"
    record.write_text(
        json.dumps({"settings": {"pair": settings["pair"], "lr": 0.01, "projection_center": "none"}})
    )
    _check_record(record, settings, "none")
    with pytest.raises(ModelError, match=r"other settings \(projection_center\)"):
        _check_record(record, settings, "standardize")


# --- the NLL of every condition ------------------------------------------------------------------
def _settings(limit: int | None = None) -> dict:
    return {
        "pair": {"assistant": "tiny-assistant", "base": "tiny-base"},
        "option_format": None,
        "num_thought_tokens": N,
        "examples": None,
        "seed": 3,
        "train": {
            "prompt_set": "paper",
            "seed": 42,
            "projection_master_dtype": "fp32",
            "max_length": 1024,
            "limit": limit,
        },
    }


def _thoughts(assistant, projector: Projector, examples: list[dict]) -> torch.Tensor:
    """Each example's projected thoughts [E, N, H_b], one example at a time."""
    renderer = PromptRenderer(load_prompt_set("paper"), assistant, None)
    out = []
    for example in examples:
        ids = torch.tensor([renderer.assistant_ids(example, N)])
        mask = torch.ones_like(ids)
        start = locate_assistant_slots(ids, mask, assistant.placeholder_ids, N, [example["id"]])
        with torch.no_grad():
            out.append(projector(assistant_states(assistant.model, ids, mask, start, N))[0])
    return torch.stack(out)


def _full_nll(model, ids: list[int], target: int, slot: int, fill: torch.Tensor | None) -> float:
    """The target's summed NLL from one forward pass over the whole sequence, no cache."""
    tokens = torch.tensor([ids])
    embeds = model.get_input_embeddings()(tokens)
    if fill is not None:
        embeds = embeds.clone()
        embeds[0, slot : slot + fill.shape[0]] = fill
    with torch.no_grad():
        logits = model(inputs_embeds=embeds).logits[0].float()
    log_probs = F.log_softmax(logits[-target - 1 : -1], dim=-1)
    return float(-log_probs.gather(1, tokens[0, -target:, None]).sum())


def _scaled_projector() -> Projector:
    """A seeded projector whose weight is large enough that the conditions differ visibly."""
    projector = Projector.seeded(48, 32, seed=7)
    with torch.no_grad():
        projector.weight.mul_(20)
    return projector


def test_every_conditions_nll_equals_a_full_forward_computation(tiny_base, tiny_assistant):
    examples = [gsm8k_example(i) for i in range(4)]
    train_examples = [gsm8k_example(i) for i in range(10, 13)]
    trained = _scaled_projector()
    inputs = scoring.ProbeInputs(examples, train_examples, "held.jsonl", "fit.jsonl")
    records = scoring.score(_settings(), inputs, tiny_base, tiny_assistant, trained, batch_size=3)

    own = _thoughts(tiny_assistant, trained, examples)
    untrained = _thoughts(tiny_assistant, Projector.seeded(48, 32, seed=42), examples)
    mean = _thoughts(tiny_assistant, trained, train_examples).mean(dim=0)
    others = heldout.derangement(len(examples), 3)
    renderer = PromptRenderer(load_prompt_set("paper"), tiny_base, None)
    for i, (example, record) in enumerate(zip(examples, records, strict=True)):
        hinted = renderer.training_sequence(example, N)
        target = len(hinted.ids) - hinted.supervised_from
        plain = scoring.plain_sequence(renderer, example)
        slot = hinted.ids.index(tiny_base.placeholder_ids.unk)
        assert record["target_tokens"] == target and plain[-target:] == hinted.ids[-target:]
        assert record["shuffled_from"] == examples[others[i]]["id"]
        expected = {
            "no-hint": _full_nll(tiny_base.model, plain, target, 0, None),
            "unk": _full_nll(tiny_base.model, hinted.ids, target, slot, None),
            "untrained": _full_nll(tiny_base.model, hinted.ids, target, slot, untrained[i]),
            "own": _full_nll(tiny_base.model, hinted.ids, target, slot, own[i]),
            "shuffled": _full_nll(tiny_base.model, hinted.ids, target, slot, own[others[i]]),
            "mean": _full_nll(tiny_base.model, hinted.ids, target, slot, mean),
        }
        for key, value in expected.items():
            assert record["nll_sum"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
            assert record["nll"][key] == pytest.approx(value / target, rel=1e-4, abs=1e-4), key
        # The conditions are not all the same number (the test would prove nothing otherwise).
        assert len({round(v, 3) for v in expected.values()}) >= 4


def test_the_mean_thoughts_use_only_the_trained_examples(tiny_base, tiny_assistant):
    examples = [gsm8k_example(i) for i in range(3)]
    train_examples = [gsm8k_example(i) for i in range(10, 14)]
    trained = _scaled_projector()
    limited = scoring.ProbeInputs(examples, train_examples[:2], "held.jsonl", "fit.jsonl")
    records = scoring.score(_settings(2), limited, tiny_base, tiny_assistant, trained)
    mean = _thoughts(tiny_assistant, trained, train_examples[:2]).mean(dim=0)
    renderer = PromptRenderer(load_prompt_set("paper"), tiny_base, None)
    hinted = renderer.training_sequence(examples[0], N)
    target = len(hinted.ids) - hinted.supervised_from
    slot = hinted.ids.index(tiny_base.placeholder_ids.unk)
    expected = _full_nll(tiny_base.model, hinted.ids, target, slot, mean)
    assert records[0]["nll_sum"]["mean"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_a_centred_projectors_conditions_equal_a_full_forward_computation(tiny_base, tiny_assistant):
    examples = [gsm8k_example(i) for i in range(3)]
    train_examples = [gsm8k_example(i) for i in range(10, 13)]
    trained = _scaled_projector()
    inputs = scoring.ProbeInputs(examples, train_examples, "held.jsonl", "fit.jsonl")
    paper_only = scoring.score(_settings(), inputs, tiny_base, tiny_assistant, trained)

    # The centred projector's statistics come from the training states, as its training sets them.
    identity = Projector(48, 48)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(48))
        identity.bias.zero_()
    centred = Projector.seeded(48, 32, seed=7, center="standardize")
    centred.fit_center(_thoughts(tiny_assistant, identity, train_examples))
    with torch.no_grad():
        centred.weight.mul_(30)
    settings = dict(_settings(), centred=["standardize"])
    records = scoring.score(
        settings, inputs, tiny_base, tiny_assistant, trained, centred={"standardize": centred}
    )

    own = _thoughts(tiny_assistant, centred, examples)
    mean = _thoughts(tiny_assistant, centred, train_examples).mean(dim=0)
    others = heldout.derangement(len(examples), 3)
    base_renderer = PromptRenderer(load_prompt_set("paper"), tiny_base, None)
    for i, (example, record, before) in enumerate(zip(examples, records, paper_only, strict=True)):
        hinted = base_renderer.training_sequence(example, N)
        target = len(hinted.ids) - hinted.supervised_from
        slot = hinted.ids.index(tiny_base.placeholder_ids.unk)
        expected = {
            "own-standardize": _full_nll(tiny_base.model, hinted.ids, target, slot, own[i]),
            "shuffled-standardize": _full_nll(tiny_base.model, hinted.ids, target, slot, own[others[i]]),
            "mean-standardize": _full_nll(tiny_base.model, hinted.ids, target, slot, mean),
        }
        assert list(record["nll_sum"]) == [key for key, _ in conditions.conditions(["standardize"])]
        for key, value in expected.items():
            assert record["nll_sum"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
        assert len({round(v, 3) for v in expected.values()}) == 3
        # The paper projector's six conditions are what they are without the centred projector.
        for key, value in before["nll_sum"].items():
            assert record["nll_sum"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_the_training_states_come_from_the_training_cache(tiny_base, tiny_assistant, tmp_path):
    examples = [gsm8k_example(i) for i in range(3)]
    train_examples = [gsm8k_example(i) for i in range(10, 13)]
    trained = Projector.seeded(48, 32, seed=7)
    plain = scoring.ProbeInputs(examples, train_examples, "held.jsonl", "fit.jsonl")
    cached = scoring.ProbeInputs(examples, train_examples, "held.jsonl", "fit.jsonl", tmp_path, "0" * 64)
    expected = scoring.score(_settings(), plain, tiny_base, tiny_assistant, trained)
    assert scoring.score(_settings(), cached, tiny_base, tiny_assistant, trained) == expected
    files = list(tmp_path.rglob("*.safetensors"))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        f"tiny-assistant/paper/gsm8k/train-n{N}.safetensors"
    ]
    assert scoring.score(_settings(), cached, tiny_base, tiny_assistant, trained) == expected  # read back


def test_a_target_that_differs_between_the_prompts_is_refused():
    with pytest.raises(DataError, match="same 3 target tokens"):
        scoring.probe_sequence("x", [1, 2, 9, 9, 3, 5, 6, 7], 5, [1, 2, 5, 6, 8], 2, 2)
    sequence = scoring.probe_sequence("x", [1, 2, 9, 9, 3, 5, 6, 7], 5, [1, 2, 4, 5, 6, 7], 2, 2)
    assert (sequence.target, sequence.shared) == (3, 2)


# --- the table -----------------------------------------------------------------------------------
def _write_per_example(path: Path, n: int, seed: int, centred: tuple[str, ...] = ()) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tokens = int(rng.integers(50, 150))
        nll = {key: float(1.5 + rng.normal(0, 0.2)) for key, _ in conditions.conditions(centred)}
        nll["own"] = nll["mean"] - 0.05 + float(rng.normal(0, 0.02))
        for center in centred:  # each centred projector's own thoughts 0.05 nats better than shuffled
            own = conditions.centred_key("own", center)
            nll[own] = nll[conditions.centred_key("shuffled", center)] - 0.05 + float(rng.normal(0, 0.02))
        rows.append(
            {
                "id": f"gsm8k-test-{i}",
                "index": i,
                "target_tokens": tokens,
                "shuffled_from": f"gsm8k-test-{(i + 1) % n}",
                "nll": nll,
                "nll_sum": {k: v * tokens for k, v in nll.items()},
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_cell_and_a_p_value_can_be_recomputed_from_the_per_example_file(tmp_path, raw):
    spec = Plan(Config(raw)).probe_table("thought_probe").settings
    spec = dict(spec, datasets=["gsm8k", "aqua"], centred=[])  # the paper projector's six rows alone
    paths = {}
    for i, dataset in enumerate(spec["datasets"]):
        per_example = tmp_path / f"{dataset}.jsonl"
        _write_per_example(per_example, 120, seed=i)
        record = tmp_path / f"{dataset}.json"
        record.write_text(json.dumps({"examples": 256, "steps": 64, "epoch_losses": [1.2], "settings": {}}))
        data = tmp_path / f"{dataset}-data.jsonl"
        data.write_text("{}\n")
        paths[dataset] = (per_example, record, data)
    lists = [[paths[ds][k] for ds in spec["datasets"]] for k in range(3)]
    table = probe_table.build_table(spec, lists[0], lists[1], lists[2], lists[2], resamples=2000)
    outputs = {suffix: tmp_path / f"thought_probe.{suffix}" for suffix in ("md", "csv", "json", "png")}
    probe_table.write_reports(table, outputs)

    rows = {(r["dataset"], r["condition"]): r for r in csv.DictReader(outputs["csv"].open())}
    per_example = [json.loads(line) for line in paths["aqua"][0].read_text().splitlines()]
    own = np.array([r["nll"]["own"] for r in per_example])
    shuffled = np.array([r["nll"]["shuffled"] for r in per_example])
    assert float(rows["aqua", "shuffled"]["mean_nll"]) == pytest.approx(shuffled.mean(), abs=1e-12)
    assert float(rows["aqua", "shuffled"]["p_value"]) == stats.sign_flip_test(own - shuffled, 2000)
    assert float(rows["aqua", "shuffled"]["own_minus"]) == pytest.approx((own - shuffled).mean(), abs=1e-12)
    assert f"{shuffled.mean():.4f}" in outputs["md"].read_text()
    assert rows["aqua", "own"]["p_value"] == ""  # the reference is not tested against itself
    p_values = [float(r["p_value"]) for r in rows.values() if r["p_value"] != ""]
    assert len(p_values) == 10
    adjusted = stats.holm_adjust(p_values)
    assert sorted(adjusted) == pytest.approx(
        sorted(float(r["p_adjusted"]) for r in rows.values() if r["p_adjusted"])
    )
    assert json.loads(outputs["json"].read_text())["own"]["aqua"] == pytest.approx(own.mean(), abs=1e-6)
    assert outputs["png"].stat().st_size > 0
    # Own thoughts were made 0.05 nats better than the mean soft prompt: the test finds it.
    assert rows["aqua", "mean"]["significant"] == "True"


def test_a_centred_projector_adds_three_rows_and_three_tests(tmp_path, raw):
    spec = dict(Plan(Config(raw)).probe_table("thought_probe").settings, datasets=["gsm8k"], centred=["mean"])
    per_example, record, data = tmp_path / "gsm8k.jsonl", tmp_path / "gsm8k.json", tmp_path / "data.jsonl"
    _write_per_example(per_example, 80, seed=5, centred=("mean",))
    record.write_text(json.dumps({"examples": 64, "steps": 16, "epoch_losses": [1.3], "settings": {}}))
    centred_record = tmp_path / "centred.json"
    centred_record.write_text(
        json.dumps({"examples": 64, "steps": 16, "epoch_losses": [1.1], "settings": {}})
    )
    data.write_text("{}\n")
    with pytest.raises(ConfigError, match="one record per centred projector"):
        probe_table.build_table(spec, [per_example], [record], [data], [data], [], resamples=500)
    table = probe_table.build_table(
        spec, [per_example], [record], [data], [data], [centred_record], resamples=500
    )
    outputs = {suffix: tmp_path / f"thought_probe.{suffix}" for suffix in ("md", "csv", "json", "png")}
    probe_table.write_reports(table, outputs)

    rows = [r for r in csv.DictReader(outputs["csv"].open())]
    per = [json.loads(line) for line in per_example.read_text().splitlines()]
    nll = {key: np.array([r["nll"][key] for r in per]) for key in per[0]["nll"]}
    tested = {(r["reference"], r["condition"]): r for r in rows if r["p_value"] != ""}
    assert set(tested) == {
        ("own", "no-hint"),
        ("own", "unk"),
        ("own", "untrained"),
        ("own", "shuffled"),
        ("own", "mean"),
        ("own-mean", "shuffled-mean"),
        ("own-mean", "mean-mean"),
        ("own-mean", "no-hint"),
    }
    for (reference, key), row in tested.items():
        differences = nll[reference] - nll[key]
        assert float(row["own_minus"]) == pytest.approx(differences.mean(), abs=1e-12)
        assert float(row["p_value"]) == stats.sign_flip_test(differences, 500)
        assert float(row["mean_nll"]) == pytest.approx(nll[key].mean(), abs=1e-12)
    adjusted = stats.holm_adjust([float(r["p_value"]) for r in tested.values()])
    assert sorted(adjusted) == pytest.approx(sorted(float(r["p_adjusted"]) for r in tested.values()))
    # Own thoughts through the centred projector were made better than another example's: found.
    assert tested["own-mean", "shuffled-mean"]["significant"] == "True"
    markdown = outputs["md"].read_text()
    for label in (
        "Mean-centred projector, own thoughts",
        "Mean-centred projector, another example's thoughts",
        "Mean-centred projector, mean training thoughts",
    ):
        assert markdown.count(f"| {label} |") == (1 if label.endswith("own thoughts") else 2)
    assert "Mean-centred projector, own thoughts minus each condition" in markdown
    assert f"{nll['own-mean'].mean():.4f}" in markdown and "train.projection_center mean" in markdown
    assert "mean loss per epoch 1.1000" in markdown  # the centred projector's own training record
    assert json.loads(outputs["json"].read_text())["shuffled-mean"]["gsm8k"] == pytest.approx(
        nll["shuffled-mean"].mean(), abs=1e-6
    )


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_the_probe_dag_resolves_for_both_presets(tmp_path, preset):
    import shutil
    import subprocess

    root = PARAMS.parent
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    result = subprocess.run(
        [
            "snakemake",
            "--snakefile",
            str(root / "Snakefile"),
            "reports/thought_probe.md",
            "reports/thought_probe_validation.md",
        ]
        + ["--config", f"preset={preset}", "-n", "--quiet", "rules"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for rule in ("probe_split", "probe_train", "probe_score", "probe_table"):
        assert rule in result.stdout
    # The probe never schedules the main tables' training or evaluation.
    assert "evaluate" not in result.stdout and "\ntrain " not in result.stdout
