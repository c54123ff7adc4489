"""The resolver: each step's settings hold exactly what can change its outputs, and its paths are
the ones the rules declare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from softcot.config import Config, deep_merge
from softcot.errors import ConfigError
from softcot.io import canonical_json, json_sha256
from softcot.methods import method_class
from softcot.methods.catalog import method_kinds
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


def test_chain_streams_reach_only_methods_with_chains(raw):
    """The switch reruns the SoftCoT++ table's chain methods only, never the main tables' jobs."""
    before = Plan(Config(raw))
    after = Plan(Config(deep_merge(raw, {"eval": {"chain_streams": "shared"}})))
    methods = [
        "cot",
        "softcot",
        "cot-sc-pp",
        "softcot-sc-pp",
        "softcot-p",
        "softcot-pp-scaling",
        "softcot-pp",
    ]
    assert before.evaluate("tiny", "gsm8k", "softcot-pp").settings["chain_streams"] == "independent"
    for method in ("cot", "softcot"):
        assert "chain_streams" not in before.evaluate("tiny", "gsm8k", method).settings
    changed = {
        method
        for method in methods
        if before.evaluate("tiny", "gsm8k", method).settings
        != after.evaluate("tiny", "gsm8k", method).settings
    }
    assert changed == {"softcot-p", "softcot-pp-scaling", "softcot-pp"}


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


def test_a_method_trained_on_one_dataset_serves_every_dataset(plan, raw):
    """The tiny preset trains every artefact on GSM8K only: every evaluation reads that artefact, and
    the table's spec names the borrowed cells for its footnote. A method's own key wins."""
    assert raw["presets"]["tiny"]["eval"]["trained_on"] == "gsm8k"
    for dataset in ["gsm8k", "aqua", "strategyqa", "date"]:
        inputs = plan.evaluate("tiny", dataset, "lora").inputs
        assert inputs["artefact"] == "results/adapters/tiny/gsm8k/lora/adapter_model.safetensors"
    rows = {row["key"]: row for row in plan.table_spec("main_table")["rows"]}
    borrowed = {ds: "gsm8k" for ds in ["asdiv-aug", "aqua", "strategyqa", "date"]}
    assert rows["lora"]["artefacts_from"] == rows["softcot"]["artefacts_from"] == borrowed
    assert rows["cot"]["artefacts_from"] == {}
    paper = Plan(Config(deep_merge(raw, {"preset": "paper"})))  # the paper preset trains per dataset
    aqua = paper.evaluate("llama", "aqua", "lora").inputs["artefact"]
    assert aqua.startswith("results/adapters/llama/aqua/")
    paper_rows = {row["key"]: row for row in paper.table_spec("main_table")["rows"]}
    assert paper_rows["softcot"]["artefacts_from"] == {"date": "gsm8k"}  # the catalog's trained_on
    raw["presets"]["tiny"]["methods"]["softcot"] = {"trained_on": "aqua"}
    own = Plan(Config(raw)).evaluate("tiny", "gsm8k", "softcot").inputs["artefact"]
    assert own == "results/projectors/tiny/aqua/projector.safetensors"


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
    assert len(step.inputs["predictions"]) == 6 * 5 * len(plan.seeds)
    paper = Plan(Config(deep_merge(plan.config.raw, {"preset": "paper"})))
    assert len(paper.table("main_table").inputs["predictions"]) == 6 * 5 * len(paper.seeds)
    assert step.outputs["png"] == "reports/main_table.png"


def test_table_spec_fingerprints_each_cells_evaluation_settings(plan, raw):
    """The fingerprint a table checks each metrics file against: the evaluation's settings, per
    dataset, so another preset's file with the same limit is told apart."""
    rows = {row["key"]: row for row in plan.table_spec("main_table")["rows"]}
    for dataset in ("gsm8k", "aqua"):
        settings = plan.evaluate("tiny", dataset, "softcot").settings
        assert rows["softcot"]["settings_sha256"][dataset] == json_sha256(
            json.loads(canonical_json(settings))
        )
    assert rows["softcot"]["settings_sha256"]["gsm8k"] != rows["softcot"]["settings_sha256"]["aqua"]
    raw["presets"]["tiny"]["eval"]["max_new_tokens"] = 64
    other = {row["key"]: row for row in Plan(Config(raw)).table_spec("main_table")["rows"]}
    assert other["softcot"]["limit"] == rows["softcot"]["limit"]
    assert other["softcot"]["settings_sha256"]["gsm8k"] != rows["softcot"]["settings_sha256"]["gsm8k"]


def test_a_table_names_the_artefact_each_cell_reads(raw):
    """The table reads each trained artefact to check the hash its cells' metrics recorded: the
    tiny preset's GSM8K projector serves every dataset; CoT reads none."""
    plan = Plan(Config(raw))
    rows = {row["key"]: row for row in plan.table_spec("main_table")["rows"]}
    projector = "results/projectors/tiny/gsm8k/projector.safetensors"
    assert rows["softcot"]["artefacts"] == dict.fromkeys(plan.table_spec("main_table")["datasets"], projector)
    assert rows["cot"]["artefacts"] == {}
    assert projector in plan.table("main_table").inputs["artefacts"]
    assert plan.merge("tiny", "gsm8k", "softcot").inputs["artefact"] == projector


def test_hand_written_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_settings("{kind: cot}")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_settings("[1, 2]")
    with pytest.raises(ConfigError, match="lacks seeds"):
        check_keys({"kind": "cot"}, {"kind", "seeds"}, "--settings")


def test_the_authors_projectors_are_an_imported_artefact(raw):
    with pytest.raises(ConfigError, match=r"imported_projectors\.tiny\.gsm8k: no released projection\.bin"):
        Plan(Config(raw)).evaluate("tiny", "gsm8k", "softcot-authors")
    raw["imported_projectors"] = {"tiny": {"gsm8k": "/weights/projection.bin"}}
    plan = Plan(Config(raw))
    step = plan.evaluate("tiny", "date", "softcot-authors")  # DU: the gsm8k projector
    assert step.inputs["artefact"] == "results/imported/projectors/tiny/gsm8k/projector.safetensors"
    assert plan.imported_source("projector", "tiny", "gsm8k") == "/weights/projection.bin"
    assert step.settings == plan.evaluate("tiny", "date", "softcot").settings


def test_presets_own_their_data_variant(raw):
    paper = Plan(Config(deep_merge(raw, {"preset": "paper"})))
    assert paper.prepare("gsm8k").settings == {"variant": "paper"}
    assert paper.prepare("aqua").settings["aqua_train_subset"]["size"] == 10000
    assert Plan(Config(raw)).prepare("gsm8k").settings == {"variant": "offline"}
    assert paper.option_format("date") == raw["data"]["date"]["option_format"]


# --- sharding and sizing --------------------------------------------------------------------------
@pytest.fixture
def paper(raw) -> Plan:
    return Plan(Config(deep_merge(raw, {"preset": "paper"})))


def test_the_tiny_preset_is_unsharded_and_the_paper_preset_sharded(plan, paper):
    assert plan.sharded_methods() == [] and set(plan.unsharded_methods()) == set(plan.config.raw["methods"])
    assert set(paper.sharded_methods()) == set(paper.config.raw["methods"])
    assert (
        paper.shards("cot") == 8 and paper.evaluate("llama", "gsm8k", "cot").runtime["batch_size"] == "auto"
    )


def test_shards_cover_the_evaluation_and_the_merge_reads_them_all(paper):
    cell = paper.evaluate("llama", "gsm8k", "softcot")
    shards = [paper.evaluate_shard("llama", "gsm8k", "softcot", k, 8) for k in range(1, 9)]
    assert all(s.settings == cell.settings and s.inputs == cell.inputs for s in shards)
    assert shards[2].outputs == {"rows": "results/predictions/llama/gsm8k/softcot/shards/3-of-8.jsonl"}
    merge = paper.merge("llama", "gsm8k", "softcot")
    assert merge.inputs["shards"] == [s.outputs["rows"] for s in shards]
    assert merge.outputs == cell.outputs and merge.settings == cell.settings
    with pytest.raises(ConfigError, match="split into 8 shards"):
        paper.evaluate_shard("llama", "gsm8k", "softcot", 1, 4)


def test_the_shard_count_is_runtime_only(raw):
    before = Plan(Config(raw)).evaluate("tiny", "gsm8k", "cot")
    after = Plan(Config(deep_merge(raw, {"presets": {"tiny": {"eval": {"shards": 3}}}})))
    assert after.evaluate("tiny", "gsm8k", "cot").settings == before.settings
    assert after.evaluate("tiny", "gsm8k", "cot").runtime["shards"] == 3 and "cot" in after.sharded_methods()


def test_job_requests_follow_the_workload(paper, plan):
    def minutes(dataset, method):
        return paper.evaluate_shard("llama", dataset, method, 1, 8).runtime["minutes"]

    assert minutes("gsm8k", "cot") > minutes("date", "cot")  # 1,319 examples against 250
    assert minutes("gsm8k", "cot-sc") > 4 * minutes("gsm8k", "cot")  # 10 samples per row
    whole = paper.evaluate("llama", "gsm8k", "cot").runtime["minutes"]
    assert minutes("gsm8k", "cot") < whole  # a shard asks for its share
    train = {ds: paper.train("projector", "llama", ds).runtime for ds in ("gsm8k", "strategyqa", "aqua")}
    assert train["gsm8k"]["minutes"] > train["strategyqa"]["minutes"]
    assert paper.example_count("aqua", "train", None) == 10000  # data.aqua_train_subset.size caps 97,467
    # The 8B base's bf16 weights pass through host memory on loading: more than 15 GiB asked for.
    assert paper.evaluate("llama", "gsm8k", "cot").runtime["mem_mb"] > 15 * 1024
    tiny = plan.evaluate("tiny", "gsm8k", "softcot").runtime
    assert tiny["minutes"] < 15 and tiny["mem_mb"] < 8000
