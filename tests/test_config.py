"""params.yaml validation and preset resolution: typos are caught by name before any job runs."""

from pathlib import Path

import pytest
import yaml

from softcot.config import Config, deep_merge, read_params
from softcot.errors import ConfigError
from softcot.methods.catalog import method_spec

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def test_shipped_params_are_valid_for_every_preset(raw):
    for preset in raw["presets"]:
        cfg = Config(deep_merge(raw, {"preset": preset}))
        assert cfg.all_cells(), preset


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"eval": {"temprature": 1.0}}, "temprature"),
        ({"train": {"lrate": 1e-3}}, "lrate"),
        ({"methods": {"cot": {"kind": "cot", "sampels": 3}}}, "sampels"),
        ({"tables": {"main_table": {"datasets": ["gsm8k", "gsm9k"]}}}, "gsm9k"),
        ({"eval": {"extractor": "lenient"}}, "lenient"),
        ({"preset": "huge"}, "huge"),
        ({"data": {"asdiv_aug": {"variants": 0}}}, "data.asdiv_aug.variants"),
    ],
)
def test_invalid_value_is_reported_by_name(raw, override, named):
    with pytest.raises(ConfigError, match=named):
        Config(deep_merge(raw, override))


def test_table_referring_to_unknown_method_is_rejected(raw):
    raw["tables"]["main_table"]["rows"][0]["method"] = "zero-shot"
    expected = r"tables\.main_table\.rows\[0\]\.method: unknown method 'zero-shot'"
    with pytest.raises(ConfigError, match=expected):
        Config(raw)


def test_seeds_cannot_differ_between_methods(raw):
    raw["methods"]["cot"]["seeds"] = [1, 2]
    with pytest.raises(ConfigError, match=r"methods\.cot\.seeds"):
        Config(raw)


@pytest.mark.parametrize(
    ("where", "entry", "named"),
    [
        ("presets.tiny.methods.lora", {"trained_on": "date"}, "'date' is not a dataset with a train split"),
        ("presets.tiny.methods.lora", {"trained_on": "gsm9k"}, "'gsm9k' is not a dataset"),
        ("methods.cot", {"kind": "cot", "trained_on": "gsm8k"}, "method kind 'cot' trains nothing"),
        ("presets.paper.eval", {"trained_on": "date"}, "'date' is not a dataset with a train split"),
    ],
)
def test_trained_on_names_a_training_set_of_a_method_that_trains(raw, where, entry, named):
    section = raw
    for key in where.split(".")[:-1]:
        section = section[key]
    section[where.split(".")[-1]] = entry
    with pytest.raises(ConfigError, match=rf"{where}\.trained_on: {named}"):
        Config(raw)


def test_role_pointing_to_missing_pair_is_rejected(raw):
    raw["presets"]["tiny"]["roles"]["main"] = "nonexistent"
    with pytest.raises(ConfigError, match=r"presets\.tiny\.roles\.main"):
        Config(raw)


def test_preset_overrides_shared_settings_and_method_overrides_both(raw):
    raw["eval"]["max_new_tokens"] = 1024
    raw["presets"]["tiny"]["eval"]["max_new_tokens"] = 64
    cfg = Config(raw)
    assert cfg.eval_settings("cot")["max_new_tokens"] == 64
    assert cfg.eval_settings("softcot-n6")["num_thought_tokens"] == 6
    assert cfg.eval_settings("softcot")["num_thought_tokens"] == raw["eval"]["num_thought_tokens"]
    assert cfg.eval_settings("cot-sc")["samples"] == 10
    assert cfg.eval_settings("cot")["samples"] == 1


def test_roles_resolve_to_pairs_and_missing_roles_drop_rows(raw):
    cfg = Config(raw)  # tiny preset: no `size_medium` role
    table = cfg.table("assistant_size")
    assert {row["pair"] for row in table["rows"]} <= set(cfg.pairs)
    assert table["dropped_rows"] == ["SoftCoT (medium assistant)"]
    paper = Config(deep_merge(raw, {"preset": "paper"}))
    assert paper.table("main_table")["rows"][0]["pair"] == "llama"
    assert paper.table("main_table")["rows"][0]["role"] == "main"  # kept: rows are tested within it
    assert paper.table("assistant_size")["dropped_rows"] == []


def test_a_yaml_syntax_error_names_its_line_and_column(tmp_path):
    lines = PARAMS.read_text().splitlines()
    lines[19] += " : [oops"
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ConfigError, match=r"params\.yaml:20:\d+: not valid YAML \(mapping values are not allowed"
    ):
        read_params(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match=r"params\.yaml:20:"):
        Config.load(tmp_path / "params.yaml")


def test_each_role_of_a_table_has_its_baseline_row(raw):
    """A row is tested against its own role's row of the baseline method: a role without one
    (whose pair has another base) or with two is refused, naming the table and the role."""
    rows = raw["tables"]["softcot_pp"]["rows"]
    raw["tables"]["softcot_pp"]["rows"] = [row for row in rows if row["key"] != "qwen3-cot-sc"]
    with pytest.raises(ConfigError, match=r"tables\.softcot_pp: role 'qwen3' has no row of the baseline"):
        Config(raw)
    raw["tables"]["softcot_pp"]["rows"] = rows
    raw["tables"]["main_table"]["rows"].append(
        {"key": "cot2", "label": "Again", "pair": "main", "method": "cot"}
    )
    with pytest.raises(
        ConfigError, match=r"tables\.main_table: role 'main' has 2 rows of the baseline method"
    ):
        Config(raw)


def test_a_role_sharing_the_base_may_use_the_baseline_row(raw):
    """assistant_size: every assistant size has the same base, and CoT reads only the base, so
    the larger assistants' rows are tested against the small one's CoT; not so for a method
    that reads the assistant."""
    Config(raw)
    raw["tables"]["assistant_size"]["rows"][0]["method"] = "assist-cot"
    with pytest.raises(ConfigError, match=r"tables\.assistant_size: role 'size_large' has no row"):
        Config(raw)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda r: r["tables"]["main_table"]["rows"][0].update(pair="mian"), r"rows\[0\]\.pair: role 'mian'"),
        (
            lambda r: r["methods"]["softcot"].update(num_thought_tokens=0),
            r"methods\.softcot\.num_thought_tokens",
        ),
        (lambda r: r["eval"].update(prompt_set="papr"), r"eval\.prompt_set: unknown prompt set 'papr'"),
        (lambda r: r["methods"]["cot"].update(prompt_set="papr"), r"methods\.cot\.prompt_set"),
        (lambda r: r["data"]["aqua"].update(option_format="{lettr}){text}"), r"data\.aqua\.option_format"),
        (
            lambda r: r["methods"]["cot"].update(kind="cot-plus"),
            r"methods\.cot\.kind: unknown kind 'cot-plus'",
        ),
    ],
)
def test_cross_references_are_checked_before_any_job(raw, edit, named):
    edit(raw)
    with pytest.raises(ConfigError, match=named):
        Config(raw)


def test_thought_count_zero_is_fine_for_methods_that_read_no_thoughts(raw):
    raw["eval"]["num_thought_tokens"] = 0
    for method in raw["methods"].values():
        reads_thoughts = "num_thought_tokens" in method_spec(method["kind"]).eval_keys
        if reads_thoughts and "num_thought_tokens" not in method:
            method["num_thought_tokens"] = 4
    assert Config(raw).eval_settings("cot")["num_thought_tokens"] == 0


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"train": {"projection_center": "median"}}, r"train\.projection_center: 'median' is not one of"),
        (
            {"presets": {"tiny": {"train": {"projection_center": "centre"}}}},
            r"presets\.tiny\.train\.projection_center: 'centre'",
        ),
        # SoftCoT++'s projectors do not centre: their sections may not set it.
        (
            {"train": {"nce-projector": {"projection_center": "mean"}}},
            r"train\.nce-projector\.projection_center: the nce-projector training does not read",
        ),
        ({"probe": {"centred": ["none"]}}, r"probe\.centred\.0: 'none' is not one of"),
        (
            {"probe": {"train": {"projection_center": "mean"}}},
            r"probe\.train\.projection_center: .* probe\.centred",
        ),
    ],
)
def test_the_projection_centring_is_checked_by_name(raw, override, named):
    with pytest.raises(ConfigError, match=named):
        Config(deep_merge(raw, override))


def test_a_train_steps_settings_reject_an_unknown_centring():
    from softcot.config import check_train_settings
    from softcot.plan import Plan

    settings = Plan.load(PARAMS).train("projector", "tiny", "gsm8k").settings
    assert check_train_settings(settings, "--settings")["projection_center"] == "none"
    with pytest.raises(ConfigError, match=r"train\.projection_center: 'median' is not one of"):
        check_train_settings(dict(settings, projection_center="median"), "--settings")
    # SoftCoT++'s settings never carry it.
    assert "projection_center" not in Plan.load(PARAMS).train("nce-projector", "tiny", "gsm8k").settings
