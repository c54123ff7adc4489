"""The table builder on synthetic prediction files written by the tests."""

import csv
import json
import re
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

from softcot import report, stats, tables
from softcot.answers import extract_answer, is_correct
from softcot.cli import main
from softcot.errors import ConfigError, DataError
from softcot.io import json_sha256, sha256_file, write_json_atomic, write_jsonl_atomic
from softcot.plan import Plan

REPO = Path(__file__).resolve().parent.parent
SEEDS = [41, 42, 43]


def synthetic_settings(pair: str, method: str, dataset: str) -> dict:
    """What a synthetic cell's metrics file records as its evaluation settings."""
    return {
        "kind": method,
        "pair": {"base": pair},
        "option_format": dataset,
        "extractor": "robust",
        "vote": "fixed",
    }


def make_row(key: str, label: str, role: str, pair: str, method: str, **extra) -> dict:
    """A resolved row, fingerprinting the synthetic settings of each dataset as the plan does."""
    fingerprints = {ds: json_sha256(synthetic_settings(pair, method, ds)) for ds in GOLD}
    row = {"key": key, "label": label, "role": role, "pair": pair, "method": method, "seeds": SEEDS}
    return row | {"limit": None, "settings_sha256": fingerprints, "artefacts": {}} | extra


def make_spec(**overrides) -> dict:
    spec = {
        "title": "Synthetic table",
        "datasets": ["gsm8k", "aqua"],
        "average": True,
        "baseline": "cot",
        "preset": "tiny",
        "primary_extractor": "robust",
        "dropped_rows": ["Left out"],
        "rows": [
            make_row("cot", "Zero-Shot CoT", "main", "p", "cot"),
            make_row("same", "No effect", "main", "p", "cot-unk"),
            # No CoT row of its own role: tested against the baseline row.
            make_row("better", "Planted effect", "second", "q", "softcot", artefacts_from={"aqua": "gsm8k"}),
        ],
    }
    return spec | overrides


GOLD = {"gsm8k": ("1", "2"), "aqua": ("A", "B")}  # (the gold answer, a wrong one)


def boxed(answer: str) -> str:
    return f"... the final answer is: $\\boxed{{{answer}}}$."


def write_seed(
    root: Path,
    row: dict,
    dataset: str,
    seed: int,
    correct,
    ids=None,
    outputs=None,
    settings=None,
    artefact_sha256=None,
):
    """A prediction and a metrics file as the evaluation writes them (robust extractor, fixed vote);
    `outputs` overrides the raw outputs (default: the gold answer boxed when correct, a wrong one
    otherwise), `settings` the recorded settings (default: the synthetic ones of the row's cell),
    `artefact_sha256` the hash of the checkpoint it read (default: none, a method without one)."""
    ids = ids or [f"{dataset}-{i:04d}" for i in range(len(correct))]
    gold, wrong = GOLD[dataset]
    outputs = outputs or [boxed(gold if ok else wrong) for ok in correct]
    records = []
    for example_id, output in zip(ids, outputs, strict=True):
        prediction = extract_answer(dataset, output, "robust")
        records.append(
            {
                "id": example_id,
                "dataset": dataset,
                "pair": row["pair"],
                "method": row["method"],
                "seed": seed,
                "output": output,
                "prediction": prediction,
                "gold": gold,
                "correct": is_correct(dataset, prediction, gold, "robust"),
                "generated_tokens": 12,
            }
        )
    where = (root, row["pair"], dataset, row["method"], seed)
    write_jsonl_atomic(report.prediction_path(*where), records)
    correct_count = sum(r["correct"] for r in records)
    write_json_atomic(
        report.metrics_path(*where),
        {
            "pair": row["pair"],
            "dataset": dataset,
            "method": row["method"],
            "seed": seed,
            "n": len(records),
            "correct": correct_count,
            "accuracy": correct_count / len(records),
            "extraction_failures": 0,
            "mean_generated_tokens": 12.0,
            "tokens_per_second": 3.5,
            "extractor": "robust",
            "vote": "fixed",
            "settings": settings or synthetic_settings(row["pair"], row["method"], dataset),
            "artefact_sha256": artefact_sha256,
        },
    )


def write_prepared(root: Path, datasets, n: int):
    for ds in datasets:
        records = [{"id": f"{ds}-{i:04d}", "question": "q", "answer": GOLD[ds][0]} for i in range(n)]
        write_jsonl_atomic(report.prepared_test_path(root, ds), records)


def write_synthetic(tmp_path: Path, spec: dict, effects: dict[str, float], n: int = 200) -> None:
    """Every row's files: each example correct with its difficulty plus the row's planted effect."""
    rng = np.random.default_rng(2024)
    for ds in spec["datasets"]:
        difficulty = rng.uniform(0.1, 0.6, n)  # + 0.3 stays below 1: the planted effect is exactly 30 points
        for row in spec["rows"]:
            for seed in row["seeds"]:
                correct = rng.random(n) < difficulty + effects[row["key"]]
                write_seed(tmp_path / "pred", row, ds, seed, correct)
    write_prepared(tmp_path / "prepared", spec["datasets"], n)


@pytest.fixture
def synthetic(tmp_path):
    """Baseline and a no-effect row near 35%, a row 30 points better, on 200 examples of varied difficulty."""
    spec = make_spec()
    write_synthetic(tmp_path, spec, {"cot": 0.0, "same": 0.0, "better": 0.3})
    return spec, tmp_path


def build(spec, tmp_path, resamples=2_000):
    return report.build_table("synthetic", spec, tmp_path / "pred", tmp_path / "prepared", resamples)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_planted_effect_is_significant_and_no_effect_is_not(synthetic):
    spec, tmp_path = synthetic
    table = build(spec, tmp_path)
    for ds in spec["datasets"]:
        better, same = table.comparisons["robust"]["better", ds], table.comparisons["robust"]["same", ds]
        assert better.significant and better.p_adjusted < 0.01
        assert better.ci_low < 30 < better.ci_high  # the planted difference, in points
        assert better.ci_low < better.delta < better.ci_high
        assert not same.significant
    assert ("cot", "gsm8k") not in table.comparisons["robust"]  # the baseline is not tested against itself


def test_delta_is_the_difference_of_cell_means_and_holm_spans_the_table(synthetic):
    spec, tmp_path = synthetic
    table = build(spec, tmp_path)
    comparisons = table.comparisons["robust"]
    for (key, ds), comparison in comparisons.items():
        expected = table.accuracies("robust", key, ds).mean() - table.accuracies("robust", "cot", ds).mean()
        assert comparison.delta == pytest.approx(expected)
    raw = np.array([c.p_value for c in comparisons.values()])
    adjusted = np.array([c.p_adjusted for c in comparisons.values()])
    assert len(raw) == 4  # 2 rows x 2 datasets
    smallest = np.argmin(raw)
    assert adjusted[smallest] == pytest.approx(min(1.0, 4 * raw[smallest]))
    assert np.all(adjusted >= raw)


def two_role_spec() -> dict:
    """make_spec's main role, and a second role (another pair) with its own CoT and a better row."""
    return make_spec(
        rows=[
            make_row("cot", "Zero-Shot CoT", "main", "p", "cot"),
            make_row("same", "No effect", "main", "p", "cot-unk"),
            make_row("better", "Planted effect", "main", "p", "softcot"),
            make_row("q-cot", "Q Zero-Shot CoT", "second", "q", "cot"),
            make_row("q-better", "Q Planted effect", "second", "q", "softcot"),
        ]
    )


def test_each_row_is_tested_against_its_own_roles_baseline_with_holm_per_role(tmp_path):
    spec = two_role_spec()
    effects = {"cot": 0.0, "same": 0.0, "better": 0.3, "q-cot": 0.2, "q-better": 0.3}
    write_synthetic(tmp_path, spec, effects)
    table = build(spec, tmp_path)
    assert table.against == {"same": "cot", "better": "cot", "q-better": "q-cot"}
    main_only = build(make_spec(rows=[row for row in spec["rows"] if row["role"] == "main"]), tmp_path)
    for mode in report.MODES:
        for key in ("same", "better"):
            for ds in spec["datasets"]:
                alone = main_only.comparisons[mode][key, ds]
                assert table.comparisons[mode][key, ds].p_adjusted == alone.p_adjusted
        for ds in spec["datasets"]:
            own = table.accuracies(mode, "q-better", ds).mean() - table.accuracies(mode, "q-cot", ds).mean()
            assert table.comparisons[mode]["q-better", ds].delta == pytest.approx(own)
            assert ("q-cot", ds) not in table.comparisons[mode]

    rows = {(r["row"], r["dataset"]): r for r in report.csv_rows(table)}
    assert (
        rows["q-better", "gsm8k"]["baseline_row"] == "q-cot" and rows["q-better", "gsm8k"]["role"] == "second"
    )
    assert rows["better", "aqua"]["baseline_row"] == "cot" and rows["q-cot", "aqua"]["baseline_row"] == ""
    markdown = report.render_markdown(table)
    assert "Difference from its own pair role's Zero-Shot CoT (Against)" in markdown
    assert "| Q Planted effect | Q Zero-Shot CoT | " in markdown
    assert "each row is tested against its own pair role's Zero-Shot CoT" in markdown
    assert "Holm–Bonferroni within each role's family" in markdown
    assert "(comparisons: 4 against Zero-Shot CoT, 2 against Q Zero-Shot CoT)" in markdown


def test_a_role_may_have_one_row_of_the_baseline_method():
    spec = two_role_spec()
    spec["rows"][1]["method"] = "cot"
    with pytest.raises(ConfigError, match=r"--settings: role 'main' has 2 rows of the baseline method 'cot'"):
        report.check_spec(spec, "--settings")
    del spec["rows"][3]["role"]
    with pytest.raises(ConfigError, match=r"rows\[3\] lacks role"):
        report.check_spec(spec, "--settings")


def outputs(out_dir, name="synthetic") -> dict:
    return {suffix: out_dir / f"{name}.{suffix}" for suffix in ("md", "csv", "json", "png")}


def out_args(out_dir, name) -> list[str]:
    return [arg for suffix, path in outputs(out_dir, name).items() for arg in (f"--{suffix}", str(path))]


def test_std_over_seeds_and_average_column(tmp_path):
    spec = make_spec(rows=make_spec()["rows"][:2])
    # 10 examples: gsm8k seeds correct on 5, 6, 8 -> 50, 60, 80 %; aqua on 3, 3, 6 -> 30, 30, 60 %.
    counts = {"gsm8k": [5, 6, 8], "aqua": [3, 3, 6]}
    for ds, per_seed in counts.items():
        for row in spec["rows"]:
            for seed, k in zip(SEEDS, per_seed, strict=True):
                write_seed(tmp_path / "pred", row, ds, seed, [i < k for i in range(10)])
    write_prepared(tmp_path / "prepared", spec["datasets"], 10)
    paths = report.write_reports(build(spec, tmp_path, 500), outputs(tmp_path / "reports"))

    rows = {(r["row"], r["dataset"]): r for r in read_csv(paths[1])}
    gsm = rows["same", "gsm8k"]
    assert float(gsm["mean"]) == pytest.approx(190 / 3, abs=1e-5)
    assert float(gsm["std"]) == pytest.approx(statistics.stdev([50, 60, 80]), abs=1e-5)
    assert float(gsm["std_population"]) == pytest.approx(statistics.pstdev([50, 60, 80]), abs=1e-5)
    assert [float(gsm[f"acc_seed{s}"]) for s in SEEDS] == [50.0, 60.0, 80.0]
    assert (gsm["n_seeds"], gsm["n_examples"]) == ("3", "10")
    # Identical rows: no difference, p = 1.
    assert float(gsm["delta"]) == 0.0 and float(gsm["p_value"]) == 1.0 and gsm["significant"] == "False"

    avg = rows["same", "avg"]  # per seed: (50+30)/2, (60+30)/2, (80+60)/2 = 40, 45, 70
    assert float(avg["mean"]) == pytest.approx(155 / 3, abs=1e-5)
    assert float(avg["std"]) == pytest.approx(statistics.stdev([40, 45, 70]), abs=1e-5)
    assert avg["p_value"] == "" and avg["n_examples"] == "20"
    assert json.loads(paths[2].read_text())["acc"]["same"] == pytest.approx(51.6667)  # the Avg column

    markdown = paths[0].read_text()
    assert "| No effect | 63.33 ± 15.28 | 40.00 ± 17.32 | 51.67 ± 16.07 |" in markdown


def test_md_csv_json_are_consistent(synthetic):
    spec, tmp_path = synthetic
    paths = report.write_reports(build(spec, tmp_path), outputs(tmp_path / "reports"))
    assert [p.name for p in paths] == ["synthetic.md", "synthetic.csv", "synthetic.json", "synthetic.png"]
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # tables without x plot bars
    markdown, csv_rows = paths[0].read_text(), read_csv(paths[1])
    metrics = json.loads(paths[2].read_text())["acc"]

    assert len(csv_rows) == 3 * 3  # rows x (datasets + avg)
    assert set(metrics) == {"cot", "same", "better"}
    accuracy_table = markdown.split("Difference from")[0]
    lines = {
        line.split(" | ")[0].strip("| "): line
        for line in accuracy_table.splitlines()
        if line.startswith("| ")
    }
    for record in csv_rows:
        if record["dataset"] == "avg":
            assert metrics[record["row"]] == pytest.approx(float(record["mean"]), abs=1e-4)
        # The unprefixed statistics are the primary (robust) extractor's.
        assert record["extractor"] == "robust" and record["mean"] == record["robust_mean"]
        mark = "†" if record["significant"] == "True" else ""
        cell = f"{float(record['mean']):.2f} ± {float(record['std']):.2f}{mark}"
        assert re.search(rf"\| {re.escape(cell)} (\||$)", lines[record["label"]]), (
            cell,
            lines[record["label"]],
        )
        if record["row"] != "cot" and record["dataset"] != "avg":
            assert float(record["p_adjusted"]) >= float(record["p_value"])
            delta, low, high = (float(record[k]) for k in ("delta", "ci_low", "ci_high"))
            assert f"{delta:+.2f} [{low:+.2f}, {high:+.2f}]" in markdown

    assert "Holm–Bonferroni over all 4 comparisons of each extractor's table" in markdown
    assert "sign-flip permutation test" in markdown and "2,000 resamples" in markdown
    assert "Seeds: 41, 42, 43." in markdown
    assert "Small n" not in markdown  # 200 examples: 2^200 sign patterns, far more than the resamples
    assert "Examples per dataset: gsm8k 200, aqua 200." in markdown
    assert "Answers read by the **robust** extractor" in markdown
    assert "## The same cells under the reference extractor" in markdown
    assert "the evaluations recorded extractor robust with vote fixed" in markdown
    assert "Preset: tiny. Rows the preset lacks: Left out." in markdown
    assert (
        "Trained on another dataset (the dataset whose projector or adapter was used): "
        "Planted effect on aqua (gsm8k)." in markdown
    )
    assert re.search(r"git commit ([0-9a-f]{40}(\+dirty)?|unknown)\.", markdown)
    digest = report.sha256_file(tmp_path / "prepared" / "gsm8k" / "test.jsonl")[:12]
    assert f"gsm8k {digest}" in markdown


def test_small_n_note_explains_an_interval_excluding_zero_beside_a_large_p(tmp_path):
    """The tiny main table's LoRA cell: on 5 examples, one seed each gets one more example right
    (differences 1/3 on 3 examples): the interval excludes 0, yet p = 2/2^3."""
    spec = make_spec(datasets=["gsm8k"], average=False, rows=make_spec()["rows"][:2])
    for seed, extra in zip(SEEDS, (2, 3, 4), strict=True):
        write_seed(tmp_path / "pred", spec["rows"][0], "gsm8k", seed, [True, True, False, False, False])
        write_seed(tmp_path / "pred", spec["rows"][1], "gsm8k", seed, [i < 2 or i == extra for i in range(5)])
    write_prepared(tmp_path / "prepared", ["gsm8k"], 5)
    markdown = report.render_markdown(build(spec, tmp_path))
    assert "| No effect | +20.00 [+6.67, +33.33], p=0.2500 (0.2500) |" in markdown
    note = next(line for line in markdown.splitlines() if "Small n" in line)
    assert note.startswith("3. Small n (as few as 5 examples per dataset)")
    assert "p ≥ 2/2^m" in note and "(m = 3 of n = 5: 1%, while p = 0.25)" in note
    assert (2 / 5) ** 5 < 0.025 and 2 / 2**5 > 0.05  # the note's two bounds


def test_missing_files_are_listed_and_nothing_is_written(synthetic):
    spec, tmp_path = synthetic
    gone = [
        report.prediction_path(tmp_path / "pred", "q", "aqua", "softcot", 42),
        report.metrics_path(tmp_path / "pred", "p", "gsm8k", "cot", 43),
    ]
    for path in gone:
        path.unlink()
    out = tmp_path / "reports"
    with pytest.raises(DataError, match="2 input files are missing") as error:
        report.write_reports(build(spec, tmp_path), outputs(out))
    assert all(str(path) in str(error.value) for path in gone)
    assert not out.exists()


def test_rows_must_cover_the_same_examples_as_the_baseline(tmp_path):
    spec = make_spec(datasets=["gsm8k"], average=False)
    spec["rows"][2]["limit"] = 3  # evaluated on the first 3 examples only
    for row in spec["rows"]:
        for seed in SEEDS:
            write_seed(
                tmp_path / "pred", row, "gsm8k", seed, [True, False, True, True, False][: row["limit"]]
            )
    write_prepared(tmp_path / "prepared", ["gsm8k"], 5)
    with pytest.raises(DataError) as error:
        build(spec, tmp_path)
    message = str(error.value)
    assert str(report.prediction_path(tmp_path / "pred", "q", "gsm8k", "softcot", 41)) in message
    assert str(report.prediction_path(tmp_path / "pred", "p", "gsm8k", "cot", 41)) in message
    assert "gsm8k-0003" in message and "hold different examples" in message


def test_every_seed_must_hold_every_test_example_once(tmp_path):
    spec = make_spec(datasets=["gsm8k"], rows=make_spec()["rows"][:1])
    for seed in SEEDS:
        write_seed(tmp_path / "pred", spec["rows"][0], "gsm8k", seed, [True, False, True])
    write_seed(
        tmp_path / "pred", spec["rows"][0], "gsm8k", 42, [True, False], ids=["gsm8k-0000", "gsm8k-0001"]
    )
    write_prepared(tmp_path / "prepared", ["gsm8k"], 3)
    with pytest.raises(DataError, match=r"seed42\.jsonl: does not hold the test examples .*gsm8k-0002"):
        build(spec, tmp_path)


# A record of seed 41 of the `cot` row on GSM8K that reads no answer (its id added per test).
EMPTY_RECORD = {"dataset": "gsm8k", "pair": "p", "method": "cot", "seed": 41, "output": ""}
EMPTY_RECORD |= {"prediction": None, "gold": "1", "correct": False}


@pytest.mark.parametrize(
    ("broken_line", "message"),
    [
        ('{"correct": true}', r"seed41\.jsonl:2: record lacks key 'id'"),
        (
            json.dumps({"id": "gsm8k-0000", **EMPTY_RECORD}),
            r"seed41\.jsonl:2: duplicate example id 'gsm8k-0000'",
        ),
        (
            json.dumps({"id": "gsm8k-9999", **EMPTY_RECORD}),
            r"seed41\.jsonl:2: example 'gsm8k-9999' is not in .*test\.jsonl",
        ),
    ],
)
def test_bad_prediction_records_name_file_and_line(tmp_path, broken_line, message):
    spec = make_spec(datasets=["gsm8k"], rows=make_spec()["rows"][:1])
    for seed in SEEDS:
        write_seed(tmp_path / "pred", spec["rows"][0], "gsm8k", seed, [True])
    path = report.prediction_path(tmp_path / "pred", "p", "gsm8k", "cot", 41)
    path.write_text(path.read_text() + broken_line + "\n")
    metrics = report.metrics_path(tmp_path / "pred", "p", "gsm8k", "cot", 41)
    metrics.write_text(json.dumps(dict(json.loads(metrics.read_text()), n=2, accuracy=0.5)))
    write_prepared(tmp_path / "prepared", ["gsm8k"], 1)
    with pytest.raises(DataError, match=message):
        build(spec, tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("correct", True, r"seed43\.jsonl:2: field 'correct' is True"),
        ("gold", "2", r"seed43\.jsonl:2: field 'gold' is '2', but .*test\.jsonl says '1'"),
        ("prediction", "1", r"seed43\.jsonl:2: field 'prediction' is '1', but the output reads '2'"),
    ],
)
def test_an_edited_prediction_file_is_refused(tmp_path, field, value, message):
    """A hand-edited cell (e.g. `correct` flipped to true) cannot change a table."""
    spec = make_spec(datasets=["gsm8k"], rows=make_spec()["rows"][:1])
    for seed in SEEDS:
        write_seed(tmp_path / "pred", spec["rows"][0], "gsm8k", seed, [True, False, True])
    path = report.prediction_path(tmp_path / "pred", "p", "gsm8k", "cot", 43)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1][field] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_prepared(tmp_path / "prepared", ["gsm8k"], 3)
    with pytest.raises(DataError, match=message):
        build(spec, tmp_path)


def two_row_cells(tmp_path: Path) -> dict:
    """CoT and CoT-UNK on GSM8K, three examples per seed; returns the spec."""
    spec = make_spec(datasets=["gsm8k"], average=False, rows=make_spec()["rows"][:2])
    for row in spec["rows"]:
        for seed in SEEDS:
            write_seed(tmp_path / "pred", row, "gsm8k", seed, [True, seed == 42, row["key"] == "cot"])
    write_prepared(tmp_path / "prepared", ["gsm8k"], 3)
    return spec


def copy_seed(tmp_path: Path, source: tuple, target: tuple, files=("predictions", "metrics")) -> None:
    """Copy one seed's files, (pair, dataset, method, seed), over another's, as by hand."""
    for name in files:
        path = {"predictions": report.prediction_path, "metrics": report.metrics_path}[name]
        path(tmp_path / "pred", *target).write_bytes(path(tmp_path / "pred", *source).read_bytes())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("predictions", "metrics"), r"cot-unk/seed41\.metrics\.json: key 'method' is 'cot', but"),
        (("predictions",), r"cot-unk/seed41\.jsonl:1: field 'method' is 'cot', but"),
    ],
)
def test_another_methods_file_copied_into_a_cell_is_refused(tmp_path, files, message):
    spec = two_row_cells(tmp_path)
    copy_seed(tmp_path, ("p", "gsm8k", "cot", 41), ("p", "gsm8k", "cot-unk", 41), files)
    with pytest.raises(DataError, match=message + " the file is read for method 'cot-unk'"):
        build(spec, tmp_path)


def test_another_seeds_file_copied_over_a_seed_is_refused(tmp_path):
    spec = two_row_cells(tmp_path)
    copy_seed(tmp_path, ("p", "gsm8k", "cot", 41), ("p", "gsm8k", "cot", 42))
    with pytest.raises(DataError, match=r"cot/seed42\.metrics\.json: key 'seed' is 41, but .* seed 42"):
        build(spec, tmp_path)
    copy_seed(tmp_path, ("p", "gsm8k", "cot", 43), ("p", "gsm8k", "cot", 42), ("metrics",))
    with pytest.raises(DataError, match=r"cot/seed42\.metrics\.json: key 'seed' is 43"):
        build(spec, tmp_path)


def test_a_file_of_other_settings_with_the_same_limit_is_refused(tmp_path):
    """Another preset's evaluation of the same cell and limit (here: more new tokens) differs in
    its settings fingerprint."""
    spec = two_row_cells(tmp_path)
    row = spec["rows"][1]
    other = synthetic_settings("p", "cot-unk", "gsm8k") | {"max_new_tokens": 512}
    write_seed(tmp_path / "pred", row, "gsm8k", 43, [True, False, False], settings=other)
    expected = row["settings_sha256"]["gsm8k"]
    message = rf"cot-unk/seed43\.metrics\.json: key 'settings' has fingerprint {json_sha256(other)}, "
    with pytest.raises(DataError, match=message + rf"but the plan resolves {expected}"):
        build(spec, tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"correct": 3}, r"seed41\.metrics\.json: key 'correct' is 3, but its prediction file has 2 correct"),
        ({"accuracy": 1.0}, r"seed41\.metrics\.json: key 'accuracy' is 1\.0, but .* 2/3"),
        (
            {"extractor": "reference"},
            r"seed41\.metrics\.json: key 'extractor' is 'reference', but its settings",
        ),
    ],
)
def test_metrics_figures_must_be_those_of_the_predictions(tmp_path, edit, message):
    spec = two_row_cells(tmp_path)
    path = report.metrics_path(tmp_path / "pred", "p", "gsm8k", "cot", 41)
    path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    with pytest.raises(DataError, match=message):
        build(spec, tmp_path)


def test_a_retrained_artefact_is_caught(tmp_path):
    """A metrics file records the sha256 of the checkpoint its evaluation read; once the artefact
    is retrained (equal settings, other weights) the table refuses the stale cell."""
    checkpoint = tmp_path / "projector.safetensors"
    checkpoint.write_bytes(b"weights of the first training")
    row = make_row("softcot", "SoftCoT", "main", "p", "softcot", artefacts={"gsm8k": str(checkpoint)})
    spec = make_spec(datasets=["gsm8k"], average=False, rows=[make_spec()["rows"][0], row])
    for each in spec["rows"]:
        recorded = sha256_file(checkpoint) if each is row else None
        for seed in SEEDS:
            write_seed(tmp_path / "pred", each, "gsm8k", seed, [True, False, True], artefact_sha256=recorded)
    write_prepared(tmp_path / "prepared", ["gsm8k"], 3)
    build(spec, tmp_path)
    first = sha256_file(checkpoint)
    checkpoint.write_bytes(b"weights of a second training")
    message = rf"softcot/seed41\.metrics\.json: key 'artefact_sha256' is '{first}', but "
    with pytest.raises(
        DataError, match=message + re.escape(f"{checkpoint} has sha256 '{sha256_file(checkpoint)}'")
    ):
        build(spec, tmp_path)
    checkpoint.unlink()
    with pytest.raises(DataError, match=re.escape(str(checkpoint)) + ": the trained artefact .* is missing"):
        build(spec, tmp_path)


def test_the_table_spec_fingerprints_each_cells_settings(tmp_path):
    spec = make_spec()
    del spec["rows"][0]["settings_sha256"]["aqua"]
    with pytest.raises(ConfigError, match=r"rows\[0\]\.settings_sha256 names no fingerprint for aqua"):
        report.check_spec(spec, "--settings")


def test_both_extractors_are_computed_from_the_raw_outputs(tmp_path):
    """An output both extractors read alike, and one only the robust extractor reads right."""
    spec = make_spec(datasets=["gsm8k"], average=False, rows=make_spec()["rows"][:2])
    tricky = "Step 1: 5 + 3 = 1. The answer is 1 apple, not 10."  # reference takes the last number
    for row in spec["rows"]:
        for seed in SEEDS:
            outputs = [boxed("1"), tricky if row["key"] == "same" else boxed("1")]
            write_seed(tmp_path / "pred", row, "gsm8k", seed, [True, True], outputs=outputs)
    write_prepared(tmp_path / "prepared", ["gsm8k"], 2)
    table = build(spec, tmp_path)
    assert table.accuracies("robust", "same", "gsm8k").tolist() == [100.0] * 3
    assert table.accuracies("reference", "same", "gsm8k").tolist() == [50.0] * 3
    rows = {r["row"]: r for r in report.csv_rows(table)}
    assert float(rows["same"]["robust_mean"]) == 100.0 and float(rows["same"]["reference_mean"]) == 50.0
    assert float(rows["same"]["reference_delta"]) == -50.0

    paper = build(dict(spec, primary_extractor="reference"), tmp_path)
    markdown = report.render_markdown(paper)
    assert markdown.index("| No effect | 50.00 ± 0.00") < markdown.index("| No effect | 100.00 ± 0.00")
    assert report.metrics(paper) == {"acc": {"cot": 100.0, "same": 50.0}}
    assert report.csv_rows(paper)[1]["mean"] == 50.0


def test_metrics_must_describe_the_prediction_file(tmp_path):
    spec = make_spec(datasets=["gsm8k"], rows=make_spec()["rows"][:1])
    for seed in SEEDS:
        write_seed(tmp_path / "pred", spec["rows"][0], "gsm8k", seed, [True, False])
    write_prepared(tmp_path / "prepared", ["gsm8k"], 2)
    metrics = report.metrics_path(tmp_path / "pred", "p", "gsm8k", "cot", 42)
    recorded = json.loads(metrics.read_text())
    metrics.write_text(json.dumps(dict(recorded, n=3)))
    with pytest.raises(DataError, match=r"seed42\.metrics\.json: key 'n' is 3 but .* has 2 records"):
        build(spec, tmp_path)
    del recorded["extractor"]
    metrics.write_text(json.dumps(recorded))
    with pytest.raises(DataError, match=r"seed42\.metrics\.json: lacks key 'extractor'"):
        build(spec, tmp_path)


def test_cli_with_params_writes_plot_table(tmp_path, monkeypatch):
    """The thought-token table of the repository's params.yaml, whose rows have x, gets a PNG."""
    monkeypatch.chdir(tmp_path)  # the SoftCoT rows' projector, at its path relative to the checkout
    plan = Plan.load(REPO / "params.yaml")
    spec = plan.table_spec("thought_tokens")
    assert all("x" in row for row in spec["rows"][1:]) and all(row["seeds"] for row in spec["rows"])
    rng = np.random.default_rng(5)
    n = spec["rows"][0]["limit"]  # the tiny preset's evaluations cover the first `limit` examples
    for row in spec["rows"]:
        artefact = row["artefacts"].get("gsm8k")
        if artefact is not None:
            Path(artefact).parent.mkdir(parents=True, exist_ok=True)
            Path(artefact).write_bytes(b"a projector")
        for seed in row["seeds"]:
            settings = plan.evaluate(row["pair"], "gsm8k", row["method"]).settings
            recorded = sha256_file(artefact) if artefact is not None else None
            write_seed(
                tmp_path / "pred",
                row,
                "gsm8k",
                seed,
                rng.random(n) < 0.5,
                settings=settings,
                artefact_sha256=recorded,
            )
    write_prepared(tmp_path / "prepared", ["gsm8k"], n + 3)
    out = tmp_path / "reports"
    args = ["table", "--table", "thought_tokens", "--params", str(REPO / "params.yaml")]
    args += ["--predictions", str(tmp_path / "pred"), "--prepared", str(tmp_path / "prepared")]
    assert main([*args, *out_args(out, "thought_tokens"), "--resamples", "200"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"thought_tokens.{s}" for s in ("csv", "json", "md", "png")
    ]
    assert (out / "thought_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(json.loads((out / "thought_tokens.json").read_text())["acc"]) == {
        row["key"] for row in spec["rows"]
    }


def test_cli_settings_default_resamples_and_errors(tmp_path, capsys):
    spec = make_spec(datasets=["gsm8k"], average=False, rows=make_spec()["rows"][::2])
    for row in spec["rows"]:
        for seed in SEEDS:
            write_seed(tmp_path / "pred", row, "gsm8k", seed, [row["key"] == "better"] * 30)
    write_prepared(tmp_path / "prepared", ["gsm8k"], 30)
    args = ["table", "--table", "synthetic", "--settings", json.dumps(spec)]
    args += ["--predictions", str(tmp_path / "pred"), "--prepared", str(tmp_path / "prepared")]
    args += out_args(tmp_path / "reports", "synthetic")
    assert main(args) == 0
    better = next(r for r in read_csv(tmp_path / "reports" / "synthetic.csv") if r["row"] == "better")
    assert float(better["p_value"]) == pytest.approx(1 / (stats.DEFAULT_RESAMPLES + 1))
    assert "10,000 resamples" in (tmp_path / "reports" / "synthetic.md").read_text()

    del spec["baseline"]
    assert main([*args[:4], json.dumps(spec), *args[5:]]) == 2
    assert "table spec lacks baseline" in capsys.readouterr().err
    args[1 + args.index("--predictions")] = str(tmp_path / "nowhere")
    assert main(args) == 2
    assert "input files are missing" in capsys.readouterr().err


def test_git_commit_reports_unknown_clean_and_dirty(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    assert tables.git_commit(outside) == "unknown"

    repo = tmp_path / "repo"  # a throwaway repository, not the project's
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("a")
    (repo / "reports").mkdir()
    (repo / "reports" / "main_table.json").write_text("{}")
    subprocess.run([*git, "add", "f.txt", "reports"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "m"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tables.git_commit(repo) == head
    # The table being written: Snakemake deletes its tracked outputs before the job.
    (repo / "reports" / "main_table.json").unlink()
    assert tables.git_commit(repo) == head
    assert tables.git_commit(repo / "reports") == head
    (repo / "f.txt").write_text("b")
    assert tables.git_commit(repo) == head + "+dirty"
