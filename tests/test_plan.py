"""The resolver: each step's settings hold exactly what can change its outputs, and its paths are
the ones the rules declare."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from softcot.config import Config, deep_merge
from softcot.errors import ConfigError
from softcot.methods import method_class, method_kinds
from softcot.plan import Plan, check_keys, eval_setting_keys, parse_settings

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(PARAMS.read_text())


@pytest.fixture
def plan(raw) -> Plan:
    return Plan(Config(raw))


def test_every_method_kind_has_its_module():
    assert set(method_kinds()) >= {"cot", "cot-unk", "assist-cot", "softcot"}
    for kind in method_kinds():
        assert method_class(kind).kind == kind


def test_eval_settings_hold_only_what_the_method_reads(plan):
    cot = plan.evaluate("tiny", "gsm8k", "cot").settings
    unk = plan.evaluate("tiny", "gsm8k", "cot-unk").settings
    assist = plan.evaluate("tiny", "gsm8k", "assist-cot").settings
    soft = plan.evaluate("tiny", "gsm8k", "softcot").settings
    assert "num_thought_tokens" not in cot and "num_thought_tokens" not in assist
    assert "num_thought_tokens" in unk and "num_thought_tokens" in soft
    assert "assist_hard_tokens" in assist and "assist_hard_tokens" not in soft
    for settings in (cot, unk, assist, soft):
        assert "batch_size" not in settings
        assert set(settings) == eval_setting_keys(settings["kind"])
    # CoT does not read the assistant, so the pair's assistant is not among its settings.
    assert set(cot["pair"]) == {"base"} and set(soft["pair"]) == {"assistant", "base"}


def test_a_thought_count_change_reaches_only_methods_that_read_it(raw):
    before = Plan(Config(raw))
    after = Plan(Config(deep_merge(raw, {"eval": {"num_thought_tokens": 2}})))
    changed = {
        method
        for method in ("cot", "cot-unk", "assist-cot", "softcot")
        if before.evaluate("tiny", "gsm8k", method).settings
        != after.evaluate("tiny", "gsm8k", method).settings
    }
    assert changed == {"cot-unk", "softcot"}


def test_batch_size_is_runtime_only(raw):
    before = Plan(Config(raw)).evaluate("tiny", "gsm8k", "softcot")
    after = Plan(Config(deep_merge(raw, {"presets": {"tiny": {"eval": {"batch_size": 7}}}}))).evaluate(
        "tiny", "gsm8k", "softcot"
    )
    assert before.settings == after.settings
    assert after.runtime["batch_size"] == 7


def test_option_format_reaches_only_datasets_with_options(raw):
    plan = Plan(Config(deep_merge(raw, {"data": {"aqua": {"option_format": "({letter}) {text}"}}})))
    assert plan.evaluate("tiny", "aqua", "cot").settings["option_format"] == "({letter}) {text}"
    assert plan.evaluate("tiny", "gsm8k", "cot").settings["option_format"] is None


def test_date_is_evaluated_with_the_gsm8k_projector(plan):
    step = plan.evaluate("tiny", "date", "softcot")
    assert step.inputs["artefact"] == "results/projectors/tiny/gsm8k/projector.safetensors"
    assert "artefact" not in plan.evaluate("tiny", "date", "cot").inputs
    with pytest.raises(ConfigError, match="no training set"):
        plan.train("projector", "tiny", "date")


def test_train_step_paths_and_settings(plan, raw):
    step = plan.train("projector", "tiny", "aqua")
    assert step.outputs == {
        "checkpoint": "results/projectors/tiny/aqua/projector.safetensors",
        "record": "results/projectors/tiny/aqua/projector.json",
    }
    assert step.inputs["train"] == "data/prepared/aqua/train.jsonl"
    assert step.settings["lr"] == raw["presets"]["tiny"]["train"]["lr"]
    assert step.settings["option_format"] == raw["data"]["aqua"]["option_format"]


def test_eval_outputs_follow_the_seeds(plan):
    outputs = plan.evaluate("tiny", "gsm8k", "cot").outputs
    assert outputs["predictions"][0] == "results/predictions/tiny/gsm8k/cot/seed41.jsonl"
    assert len(outputs["predictions"]) == len(outputs["metrics"]) == len(plan.seeds)


def test_table_reads_every_row_and_dataset(plan):
    step = plan.table("main_table")
    assert len(step.inputs["predictions"]) == 4 * 5 * len(plan.seeds)
    assert step.outputs["png"] == "reports/main_table.png"


def test_hand_written_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_settings("{kind: cot}")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_settings("[1, 2]")
    with pytest.raises(ConfigError, match="lacks seeds"):
        check_keys({"kind": "cot"}, {"kind", "seeds"}, "--settings")
