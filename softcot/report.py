"""`softcot table`: turn prediction files into a significance-tested table (md, csv, json, png).

A table spec is the params.yaml layout with roles resolved, each row's seeds and the preset
name (softcot.plan's `table_spec`). Snakemake passes it as --settings so a --config override
reaches the builder; by hand it is resolved from --params. Any directory of prediction files laid
out as {pair}/{dataset}/{method}/seed{seed}.jsonl can be tabulated.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from softcot import stats
from softcot.errors import ConfigError, DataError
from softcot.io import atomic_path, read_jsonl, sha256_file, write_json_atomic, write_text_atomic
from softcot.plan import Plan, parse_settings

ALPHA = 0.05
SIGNIFICANT_MARK = "†"
AVERAGE = "avg"
SPEC_KEYS = ("title", "datasets", "baseline", "rows", "preset")
ROW_KEYS = ("key", "label", "pair", "method", "seeds")


# --- spec and paths ---------------------------------------------------------------------
def prediction_path(root: str | Path, pair: str, dataset: str, method: str, seed: int) -> Path:
    return Path(root) / pair / dataset / method / f"seed{seed}.jsonl"


def metrics_path(root: str | Path, pair: str, dataset: str, method: str, seed: int) -> Path:
    return Path(root) / pair / dataset / method / f"seed{seed}.metrics.json"


def prepared_test_path(root: str | Path, dataset: str) -> Path:
    return Path(root) / dataset / "test.jsonl"


def input_paths(spec: dict[str, Any], predictions: str | Path, prepared: str | Path) -> list[Path]:
    """Every file the table reads: predictions and metrics per (row, dataset, seed), prepared test sets."""
    paths = []
    for row in spec["rows"]:
        for dataset in spec["datasets"]:
            for seed in row["seeds"]:
                where = (predictions, row["pair"], dataset, row["method"], seed)
                paths += [prediction_path(*where), metrics_path(*where)]
    return paths + [prepared_test_path(prepared, dataset) for dataset in spec["datasets"]]


def check_spec(spec: Any, source: str) -> None:
    """A hand-written --settings spec fails here with the missing key named, not deep in the build."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: the table spec must be a JSON object")
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise ConfigError(f"{source}: table spec lacks {', '.join(missing)}")
    for i, row in enumerate(spec["rows"]):
        lacking = [key for key in ROW_KEYS if key not in row]
        if lacking:
            raise ConfigError(f"{source}: rows[{i}] lacks {', '.join(lacking)}")
    if spec["baseline"] not in {row["key"] for row in spec["rows"]}:
        raise ConfigError(f"{source}: baseline {spec['baseline']!r} is not a row key")


# --- reading predictions ----------------------------------------------------------------
@dataclass
class CellPredictions:
    """One (row, dataset): per-seed correctness of every example, aligned by sorted example id."""

    files: list[Path]
    ids: list[str]
    correct: np.ndarray  # [seeds, examples] bool
    extractor: str
    accuracies: np.ndarray = field(init=False)  # per seed, in %

    def __post_init__(self) -> None:
        self.accuracies = self.correct.mean(axis=1) * 100


def read_correctness(path: Path) -> dict[str, bool]:
    """Example id -> correct, from one prediction file; duplicate ids and non-bool `correct` are errors."""
    correct: dict[str, bool] = {}
    for lineno, record in read_jsonl(path):
        for key in ("id", "correct"):
            if key not in record:
                raise DataError(f"{path}:{lineno}: record lacks key {key!r}")
        if not isinstance(record["correct"], bool):
            raise DataError(
                f"{path}:{lineno}: key 'correct' must be true or false, got {record['correct']!r}"
            )
        example_id = str(record["id"])
        if example_id in correct:
            raise DataError(f"{path}:{lineno}: duplicate example id {example_id!r}")
        correct[example_id] = record["correct"]
    if not correct:
        raise DataError(f"{path}: no prediction records")
    return correct


def read_extractor(path: Path, n_records: int) -> str:
    """The answer-extraction mode from a metrics file, after checking it describes as many examples."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg})") from exc
    for key in ("extractor", "n"):
        if key not in metrics:
            raise DataError(f"{path}: lacks key {key!r}")
    if metrics["n"] != n_records:
        raise DataError(f"{path}: key 'n' is {metrics['n']} but its prediction file has {n_records} records")
    return metrics["extractor"]


def _id_difference(left: set[str], right: set[str]) -> str:
    def sample(ids: set[str]) -> str:
        return ", ".join(sorted(ids)[:3]) + (", ..." if len(ids) > 3 else "")

    only_left, only_right = left - right, right - left
    return (
        f"{len(only_left)} ids only in the first ({sample(only_left)}), "
        f"{len(only_right)} only in the second ({sample(only_right)})"
    )


def load_cell(row: dict[str, Any], dataset: str, predictions: Path) -> CellPredictions:
    files, per_seed, extractors = [], [], set()
    for seed in row["seeds"]:
        where = (predictions, row["pair"], dataset, row["method"], seed)
        path = prediction_path(*where)
        correct = read_correctness(path)
        if per_seed and correct.keys() != per_seed[0].keys():
            raise DataError(
                f"{files[0]} and {path} hold different examples: "
                f"{_id_difference(set(per_seed[0]), set(correct))}"
            )
        extractors.add(read_extractor(metrics_path(*where), len(correct)))
        files.append(path)
        per_seed.append(correct)
    if len(extractors) > 1:
        raise DataError(f"seeds of {files[0].parent} used different extractors: {sorted(extractors)}")
    ids = sorted(per_seed[0])
    matrix = np.array([[seed_correct[i] for i in ids] for seed_correct in per_seed], dtype=bool)
    return CellPredictions(files=files, ids=ids, correct=matrix, extractor=extractors.pop())


# --- the table --------------------------------------------------------------------------
@dataclass
class Comparison:
    """A row against the baseline on one dataset; differences in percentage points."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.p_adjusted < ALPHA


@dataclass
class Table:
    name: str
    spec: dict[str, Any]
    cells: dict[tuple[str, str], CellPredictions]  # (row key, dataset)
    comparisons: dict[tuple[str, str], Comparison]
    resamples: int
    commit: str
    data_hashes: dict[str, str]

    @property
    def baseline_row(self) -> dict[str, Any]:
        return next(row for row in self.spec["rows"] if row["key"] == self.spec["baseline"])

    def average(self, row_key: str) -> np.ndarray:
        """Per-seed accuracy averaged over the datasets with equal weight (the paper's Avg column)."""
        return np.mean([self.cells[row_key, ds].accuracies for ds in self.spec["datasets"]], axis=0)


def compare(cell: CellPredictions, baseline: CellPredictions, resamples: int) -> Comparison:
    """Paired by example id on correctness averaged over each row's seeds."""
    if cell.ids != baseline.ids:
        raise DataError(
            f"{cell.files[0]} and baseline {baseline.files[0]} hold different examples: "
            f"{_id_difference(set(cell.ids), set(baseline.ids))}"
        )
    differences = cell.correct.mean(axis=0) - baseline.correct.mean(axis=0)
    low, high = stats.bootstrap_ci(differences, resamples)
    return Comparison(
        delta=float(differences.mean()) * 100,
        ci_low=low * 100,
        ci_high=high * 100,
        p_value=stats.sign_flip_test(differences, resamples),
    )


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the working tree, "+dirty" when it has changes, "unknown" outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def build_table(
    name: str,
    spec: dict[str, Any],
    predictions: str | Path,
    prepared: str | Path,
    resamples: int = stats.DEFAULT_RESAMPLES,
) -> Table:
    """Read every input (all missing files are reported at once), then test each row against the baseline."""
    missing = [str(path) for path in input_paths(spec, predictions, prepared) if not path.exists()]
    if missing:
        raise DataError(f"table {name}: {len(missing)} input files are missing:\n  " + "\n  ".join(missing))
    work = [(row, ds) for row in spec["rows"] for ds in spec["datasets"]]
    cells = {
        (row["key"], ds): load_cell(row, ds, Path(predictions))
        for row, ds in tqdm(work, desc=f"{name}: reading predictions", unit="cell")
    }
    tested = [(row["key"], ds) for row, ds in work if row["key"] != spec["baseline"]]
    comparisons = {
        key: compare(cells[key], cells[spec["baseline"], key[1]], resamples)
        for key in tqdm(tested, desc=f"{name}: significance tests", unit="test")
    }
    adjusted = stats.holm_adjust([c.p_value for c in comparisons.values()])
    for comparison, p_adjusted in zip(comparisons.values(), adjusted, strict=True):
        comparison.p_adjusted = float(p_adjusted)
    data_hashes = {ds: sha256_file(prepared_test_path(prepared, ds))[:12] for ds in spec["datasets"]}
    return Table(name, spec, cells, comparisons, resamples, git_commit(), data_hashes)


# --- outputs ----------------------------------------------------------------------------
def _fmt_cell(accuracies: np.ndarray, mark: str = "") -> str:
    mean, sample_std, _ = stats.mean_and_std(accuracies)
    text = f"{mean:.2f}" if np.isnan(sample_std) else f"{mean:.2f} ± {sample_std:.2f}"
    return text + mark


def _fmt_seeds(table: Table) -> str:
    by_seeds: dict[tuple[int, ...], list[str]] = {}
    for row in table.spec["rows"]:
        by_seeds.setdefault(tuple(row["seeds"]), []).append(row["label"])
    if len(by_seeds) == 1:
        return ", ".join(map(str, next(iter(by_seeds))))
    return "; ".join(f"{', '.join(labels)}: {', '.join(map(str, s))}" for s, labels in by_seeds.items())


def render_markdown(table: Table) -> str:
    spec, datasets = table.spec, table.spec["datasets"]
    average = spec.get("average", False)
    baseline_label = table.baseline_row["label"]
    header = ["Method", *datasets] + (["Avg"] if average else [])
    lines = [f"# {spec['title']}", "", "| " + " | ".join(header) + " |"]
    lines.append("|:--" + "|--:" * (len(header) - 1) + "|")
    for row in spec["rows"]:
        cells = []
        for ds in datasets:
            comparison = table.comparisons.get((row["key"], ds))
            mark = SIGNIFICANT_MARK if comparison and comparison.significant else ""
            cells.append(_fmt_cell(table.cells[row["key"], ds].accuracies, mark))
        if average:
            cells.append(_fmt_cell(table.average(row["key"])))
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")

    lines += ["", f"Difference from {baseline_label} in points [95% CI], p (Holm-adjusted p):", ""]
    lines += ["| Method | " + " | ".join(datasets) + " |", "|:--" + "|--:" * len(datasets) + "|"]
    for row in spec["rows"]:
        if row["key"] == spec["baseline"]:
            continue
        cells = []
        for ds in datasets:
            c = table.comparisons[row["key"], ds]
            cells.append(
                f"{c.delta:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}], p={c.p_value:.4f} ({c.p_adjusted:.4f})"
            )
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")

    extractors = sorted({cell.extractor for cell in table.cells.values()})
    notes = [
        "Accuracy (%): mean ± sample standard deviation (n−1) over seeds; "
        f"{table.name}.csv also has the population standard deviation (n) and every per-seed accuracy.",
        f"{SIGNIFICANT_MARK}: Holm-adjusted p < {ALPHA} against {baseline_label} on the same dataset. "
        "Test: two-sided paired sign-flip permutation test on per-example correctness averaged over the "
        f"seeds, examples paired by id, {table.resamples:,} resamples from numpy "
        f"default_rng({stats.DEFAULT_SEED}), "
        "p = (b+1)/(R+1); exact instead (the share of all 2^n sign flips of the n non-zero "
        "differences, identity included) where n ≤ log2(resamples). Correction: Holm–Bonferroni over all "
        f"{len(table.comparisons)} comparisons of this table. CI: percentile bootstrap of the mean "
        f"difference, {table.resamples:,} resamples.",
        f"Seeds: {_fmt_seeds(table)}.",
        "Examples per dataset: "
        + ", ".join(f"{ds} {len(table.cells[spec['baseline'], ds].ids)}" for ds in datasets)
        + ".",
        f"Answer extractor: {', '.join(extractors)}.",
        f"Preset: {spec['preset']}."
        + (f" Rows the preset lacks: {', '.join(spec['dropped_rows'])}." if spec.get("dropped_rows") else ""),
        f"Code: git commit {table.commit}.",
        "Data: sha256 (first 12 hex) of each prepared test.jsonl: "
        + ", ".join(f"{ds} {digest}" for ds, digest in table.data_hashes.items())
        + ".",
    ]
    if average:
        notes.insert(
            3,
            "Avg: for each seed, the unweighted mean of the dataset accuracies; then mean ± sample std "
            "over seeds. Not tested for significance.",
        )
    lines += ["", "Notes:", ""] + [f"{i}. {note}" for i, note in enumerate(notes, start=1)]
    return "\n".join(lines) + "\n"


def _number(value: float) -> float | str:
    return "" if np.isnan(value) else float(value)


def csv_rows(table: Table) -> list[dict[str, Any]]:
    """One row per (table row, dataset), plus an `avg` dataset row when the table has an Avg column."""
    seeds = sorted({seed for row in table.spec["rows"] for seed in row["seeds"]})
    out = []
    for row in table.spec["rows"]:
        entries = [(ds, table.cells[row["key"], ds].accuracies) for ds in table.spec["datasets"]]
        if table.spec.get("average"):
            entries.append((AVERAGE, table.average(row["key"])))
        for ds, accuracies in entries:
            mean, std, std_population = stats.mean_and_std(accuracies)
            cells = (
                [table.cells[row["key"], d] for d in table.spec["datasets"]]
                if ds == AVERAGE
                else [table.cells[row["key"], ds]]
            )
            comparison = table.comparisons.get((row["key"], ds))
            record = {
                "table": table.name,
                "row": row["key"],
                "label": row["label"],
                "pair": row["pair"],
                "method": row["method"],
                "dataset": ds,
                "mean": _number(mean),
                "std": _number(std),
                "std_population": _number(std_population),
                "n_seeds": len(accuracies),
                "n_examples": sum(len(cell.ids) for cell in cells),
                "delta": _number(comparison.delta) if comparison else "",
                "ci_low": _number(comparison.ci_low) if comparison else "",
                "ci_high": _number(comparison.ci_high) if comparison else "",
                "p_value": _number(comparison.p_value) if comparison else "",
                "p_adjusted": _number(comparison.p_adjusted) if comparison else "",
                "significant": comparison.significant if comparison else "",
                "extractor": ",".join(sorted({cell.extractor for cell in cells})),
            }
            per_seed = dict(zip(row["seeds"], accuracies, strict=True))
            record.update({f"acc_seed{s}": _number(per_seed[s]) if s in per_seed else "" for s in seeds})
            out.append(record)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def metrics(table: Table) -> dict[str, dict[str, float]]:
    """{row key: {dataset: mean accuracy %, avg?}}: nested so `dvc exp show` lists one column per cell."""
    out = {}
    for row in table.spec["rows"]:
        means = {
            ds: round(float(table.cells[row["key"], ds].accuracies.mean()), 4)
            for ds in table.spec["datasets"]
        }
        if table.spec.get("average"):
            means[AVERAGE] = round(float(table.average(row["key"]).mean()), 4)
        out[row["key"]] = means
    return out


def write_plot(path: Path, table: Table) -> None:
    """Tables whose rows sit at a position `x` (e.g. the thought-token count) plot accuracy against
    x with the baseline dashed; the others plot one bar group per dataset. Error bars: sample std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if any("x" in row for row in table.spec["rows"]):
        _plot_against_x(ax, table)
    else:
        _plot_bars(ax, table)
    ax.set_ylabel("accuracy (%), mean ± sample std over seeds")
    ax.set_title(table.spec["title"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def _summary(table: Table, row_key: str, dataset: str) -> tuple[float, float]:
    mean, std, _ = stats.mean_and_std(table.cells[row_key, dataset].accuracies)
    return mean, 0.0 if np.isnan(std) else std


def _plot_against_x(ax: Any, table: Table) -> None:
    positioned = sorted((row for row in table.spec["rows"] if "x" in row), key=lambda row: row["x"])
    for ds in table.spec["datasets"]:
        summaries = [_summary(table, row["key"], ds) for row in positioned]
        line = ax.errorbar(
            [row["x"] for row in positioned],
            [mean for mean, _ in summaries],
            yerr=[std for _, std in summaries],
            marker="o",
            capsize=3,
            label=ds,
        )
        baseline = table.cells[table.spec["baseline"], ds].accuracies.mean()
        ax.axhline(
            baseline, linestyle="--", color=line[0].get_color(), label=f"{ds}: {table.baseline_row['label']}"
        )
    ax.set_xlabel(table.spec.get("plot", {}).get("x_label", "x"))


def _plot_bars(ax: Any, table: Table) -> None:
    datasets, rows = table.spec["datasets"], table.spec["rows"]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        summaries = [_summary(table, row["key"], ds) for ds in datasets]
        ax.bar(
            [d + (i - (len(rows) - 1) / 2) * width for d in range(len(datasets))],
            [mean for mean, _ in summaries],
            width,
            yerr=[std for _, std in summaries],
            capsize=2,
            label=row["label"],
        )
    ax.set_xticks(range(len(datasets)), datasets)


def write_reports(table: Table, outputs: dict[str, Path]) -> list[Path]:
    """Write the md, csv, json and png named in `outputs`; return their paths."""
    write_text_atomic(outputs["md"], render_markdown(table))
    write_csv(outputs["csv"], csv_rows(table))
    write_json_atomic(outputs["json"], metrics(table))
    write_plot(outputs["png"], table)
    return [outputs[suffix] for suffix in ("md", "csv", "json", "png")]


# --- command line -----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="table name in params.yaml `tables`")
    parser.add_argument(
        "--params", default="params.yaml", help="configuration file (ignored with --settings)"
    )
    parser.add_argument("--settings", help="the table spec as JSON (Snakemake passes it); overrides --params")
    parser.add_argument("--predictions", default="results/predictions", help="root of the prediction files")
    parser.add_argument("--prepared", default="data/prepared", help="root of the prepared datasets")
    for suffix in ("md", "csv", "json", "png"):
        parser.add_argument(f"--{suffix}", required=True, type=Path, help=f"the {suffix} report to write")
    parser.add_argument(
        "--resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="permutation and bootstrap resamples"
    )


def run(args: argparse.Namespace) -> int:
    if args.resamples < 1:
        raise ConfigError(f"--resamples must be at least 1, got {args.resamples}")
    if args.settings is None:
        spec = Plan.load(args.params).table_spec(args.table)
    else:
        spec = parse_settings(args.settings)
        check_spec(spec, "--settings")
    table = build_table(args.table, spec, args.predictions, args.prepared, args.resamples)
    outputs = {suffix: getattr(args, suffix) for suffix in ("md", "csv", "json", "png")}
    for path in write_reports(table, outputs):
        print(path)
    return 0
