"""The Snakemake workflow: every table's DAG resolves for both presets, a bad config stops it
before any job, and the tiny preset runs end to end on very small limits."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from softcot.config import Config
from softcot.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
TABLES = Config.load(ROOT / "params.yaml").table_names()
MIRROR = Path(os.environ.get("SOFTCOT_DATA_MIRROR", ROOT.parent / "shared" / "datasets"))


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["snakemake", "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("table", TABLES)
def test_dry_run_resolves_every_table(tmp_path, table, preset):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    result = snakemake(
        f"reports/{table}.md", "--config", f"preset={preset}", "-n", "--quiet", "rules", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "evaluate" in result.stdout and "table" in result.stdout


def test_the_paper_preset_shards_evaluations_and_sizes_each_job(tmp_path):
    """`snakemake -n --config preset=paper`: eval.shards jobs per evaluation and a merge, each
    shard's runtime from its workload; the tiny preset keeps one job per evaluation."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    paper = Plan.load(ROOT / "params.yaml", overrides={"preset": "paper"})
    cells = {
        (row["method"], ds)
        for row in paper.table_spec("main_table")["rows"]
        for ds in paper.table_spec("main_table")["datasets"]
    }
    result = snakemake("reports/main_table.md", "--config", "preset=paper", "-n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = result.stdout.split("\nrule ")[1:]
    shards = [b for b in blocks if b.startswith("evaluate_shard:")]
    merges = [b for b in blocks if b.startswith("merge_shards:")]
    assert len(merges) == len(cells) and len(shards) == paper.shards("cot") * len(merges) > len(merges)
    runtimes = {int(re.search(r"runtime=(\d+)", b).group(1)) for b in shards}
    assert len(runtimes) > 1  # GSM8K's 1,319 examples ask for more time than Date's 250
    assert not any(b.startswith("evaluate:") for b in blocks)
    tiny = snakemake("reports/main_table.md", "-n", "--quiet", "rules", cwd=tmp_path)
    assert "evaluate_shard" not in tiny.stdout and "merge_shards" not in tiny.stdout
    tiny_rows = Plan.load(ROOT / "params.yaml").table_spec("main_table")["rows"]
    assert [row["key"] for row in tiny_rows] == ["cot", "cot-unk", "assist-cot", "lora", "coconut", "softcot"]
    assert re.search(rf"^evaluate\s+{len(tiny_rows) * 5}$", tiny.stdout, re.MULTILINE), tiny.stdout


def test_a_misspelt_key_stops_the_workflow_before_any_job(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval"]["temprature"] = 0.7
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = snakemake("-n", "reports/main_table.md", cwd=tmp_path)
    assert result.returncode != 0
    assert "eval: Unevaluated properties are not allowed ('temprature'" in result.stdout + result.stderr


def test_an_unknown_dataset_in_a_table_is_named(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tables"]["main_table"]["datasets"].append("svamp")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = snakemake("-n", "reports/main_table.md", cwd=tmp_path)
    assert result.returncode != 0
    assert "svamp" in result.stdout + result.stderr


def test_a_table_s_left_out_rows_are_named_once_and_only_for_that_table(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    notice = "preset 'tiny' leaves out the rows"
    main = snakemake("-n", "reports/main_table.md", cwd=tmp_path)
    assert main.returncode == 0 and notice not in main.stdout + main.stderr
    both = snakemake("-n", "reports/assistant_size.md", "reports/main_table.md", cwd=tmp_path)
    assert both.returncode == 0 and (both.stdout + both.stderr).count(notice) == 1
    assert (
        "assistant_size: preset 'tiny' leaves out the rows SoftCoT (medium assistant)"
        in both.stdout + both.stderr
    )


def test_a_failing_job_prints_its_own_error_on_the_console(tmp_path):
    """A plain `snakemake --cores 1 TARGET`: the job's reason (in its log) reaches the console."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    train = tmp_path / "data" / "prepared" / "gsm8k" / "train.jsonl"
    train.parent.mkdir(parents=True)
    train.write_text('{"id": "a"}\n{broken\n')
    result = snakemake("--cores", "1", "results/probe/data/gsm8k/fit.jsonl", cwd=tmp_path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "softcot probe: error: data/prepared/gsm8k/train.jsonl:2: not valid JSON" in out


def tree_state(root: Path) -> dict[str, int]:
    """Every path below `root` with its modification time (ns): what a write would change."""
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_a_dry_run_over_a_truncated_model_writes_nothing_and_names_the_repair(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    model = tmp_path / "results" / "models" / "smollm2-135m-instruct"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"x" * 10)
    manifest = {"files": {"model.safetensors": "0" * 64}, "sizes": {"model.safetensors": 20}}
    (model / "softcot_model.json").write_text(json.dumps(manifest))
    before = tree_state(tmp_path)

    result = snakemake("-n", "reports/main_table.md", cwd=tmp_path)

    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "model.safetensors: 10 bytes, the manifest says 20" in out
    assert "softcot verify smollm2-135m-instruct --invalidate" in out
    after = {path: mtime for path, mtime in tree_state(tmp_path).items() if not path.startswith(".snakemake")}
    assert after == before


@pytest.mark.slow
@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no dataset mirror at {MIRROR} (set SOFTCOT_DATA_MIRROR)")
def test_tiny_preset_builds_the_main_table_end_to_end(tmp_path):
    """Models are materialized once into the checkout's results/models and shared with this run.

    Two datasets keep CI short (each one costs six evaluation jobs): GSM8K, which trains every
    artefact, and StrategyQA, which is served by them (`trained_on`). The full five-dataset DAG is
    what the dry runs above resolve."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tables"]["main_table"]["datasets"] = ["gsm8k", "strategyqa"]
    tiny = params["presets"]["tiny"]
    tiny["train"].update(limit=8, epochs=1)
    tiny["eval"].update(limit=3, max_new_tokens=8, seeds=[41, 42])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    models = ROOT / "results" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "models").symlink_to(models)

    env = dict(os.environ, SOFTCOT_DATA_MIRROR=str(MIRROR))
    result = subprocess.run(
        ["snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "2"] + ["reports/main_table.md"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    rows = list(csv.DictReader((tmp_path / "reports" / "main_table.csv").open()))
    cells = {(r["method"], r["dataset"]) for r in rows if r["dataset"] != "avg"}
    methods = ["cot", "cot-unk", "assist-cot", "lora", "coconut", "softcot"]
    datasets = params["tables"]["main_table"]["datasets"]
    assert cells == {(m, d) for m in methods for d in datasets}
    # The tiny fine-tuning baselines train on GSM8K alone and serve every dataset.
    adapters = tmp_path / "results/adapters/tiny"
    trained = sorted(str(p.parent.relative_to(adapters)) for p in adapters.glob("*/*/adapter.json"))
    assert trained == ["gsm8k/coconut", "gsm8k/lora"]
    assert "Trained on another dataset" in (tmp_path / "reports" / "main_table.md").read_text()
    assert all(r["n_seeds"] == "2" and r["n_examples"] == "3" for r in rows if r["dataset"] != "avg")
    markdown = (tmp_path / "reports" / "main_table.md").read_text()
    assert "SoftCoT" in markdown and "±" in markdown
    record = yaml.safe_load((tmp_path / "results/projectors/tiny/gsm8k/projector.json").read_text())
    assert record["num_thought_tokens"] == 32

    again = snakemake("reports/main_table.md", "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr

    # A parameter change reruns exactly the jobs that read it.
    def planned_jobs(edit) -> dict[str, int]:
        changed = yaml.safe_load(yaml.safe_dump(params))
        edit(changed)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed))
        result = snakemake("reports/main_table.md", "-n", "--quiet", "rules", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        counts = {}
        for line in result.stdout.splitlines():
            words = line.split()
            if len(words) == 2 and words[1].isdigit() and words[0] != "total":
                counts[words[0]] = int(words[1])
        return counts

    # N at evaluation is read by CoT-UNK and SoftCoT on both datasets, and by nothing that trains.
    assert planned_jobs(lambda p: p["eval"].update(num_thought_tokens=2)) == {"evaluate": 4, "table": 1}
    assert planned_jobs(lambda p: p["presets"]["tiny"]["eval"].update(batch_size=2)) == {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


def test_dvc_has_one_stage_per_table_calling_its_target():
    """Each stage runs `softcot dvc-stage TABLE` (which runs the table's snakemake target, see
    tests/test_params_file.py), and DVC keeps the reports while it runs."""
    result = subprocess.run(["dvc", "stage", "list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {line.split()[0] for line in result.stdout.splitlines()} == {f"table@{t}" for t in TABLES}
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["table"]
    assert stage["foreach"] == "${tables}"
    assert stage["do"]["cmd"] == "softcot dvc-stage ${key}"
    outputs = stage["do"]["outs"] + stage["do"]["metrics"]
    assert all(next(iter(out.values()))["persist"] for out in outputs)
