"""`softcot table`: turn prediction files into a significance-tested table (md, csv, json, png).

Every cell is computed under both answer extractors (softcot.predictions): the preset's primary one
is shown first, the other in a second block, and the csv has both.

A table spec is the params.yaml layout with roles resolved, each row's seeds and the preset
name (softcot.plan's `table_spec`). Snakemake passes it as --settings so a --config override
reaches the builder; by hand it is resolved from --params. Any directory of prediction files laid
out as {pair}/{dataset}/{method}/seed{seed}.jsonl can be tabulated.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from softcot import stats, tables
from softcot.errors import ConfigError, DataError
from softcot.io import sha256_file
from softcot.plan import Plan, parse_settings
from softcot.predictions import (
    MODES,
    Cell,
    TestSet,
    id_difference,
    load_cell,
    metrics_path,
    prediction_path,
    prepared_test_path,
)
from softcot.tables import ALPHA, REPORT_SUFFIXES, SIGNIFICANT_MARK, Comparison, apply_holm, git_commit

AVERAGE = "avg"
SPEC_KEYS = ("title", "datasets", "baseline", "rows", "preset", "primary_extractor")
ROW_KEYS = ("key", "label", "role", "pair", "method", "seeds", "limit", "settings_sha256", "artefacts")
CSV_STATS = (
    "mean",
    "std",
    "std_population",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "significant",
)


# --- spec and paths ---------------------------------------------------------------------
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
        fingerprints = row["settings_sha256"]
        unnamed = [
            ds for ds in spec["datasets"] if not isinstance(fingerprints, dict) or ds not in fingerprints
        ]
        if unnamed:
            raise ConfigError(
                f"{source}: rows[{i}].settings_sha256 names no fingerprint for {', '.join(unnamed)}"
            )
    if spec["baseline"] not in {row["key"] for row in spec["rows"]}:
        raise ConfigError(f"{source}: baseline {spec['baseline']!r} is not a row key")
    baseline_method = _baseline_method(spec)
    for role in dict.fromkeys(row["role"] for row in spec["rows"]):
        keys = [
            row["key"] for row in spec["rows"] if row["role"] == role and row["method"] == baseline_method
        ]
        if len(keys) > 1:
            raise ConfigError(
                f"{source}: role {role!r} has {len(keys)} rows of the baseline method "
                f"{baseline_method!r} ({', '.join(keys)}); each role may have one"
            )
    if spec["primary_extractor"] not in MODES:
        raise ConfigError(f"{source}: primary_extractor must be one of {', '.join(MODES)}")


def _baseline_method(spec: dict[str, Any]) -> str:
    return next(row["method"] for row in spec["rows"] if row["key"] == spec["baseline"])


def tested_against(spec: dict[str, Any]) -> dict[str, str]:
    """Row key -> the key of the row it is tested against: the row of its own pair role that
    evaluates the baseline row's method, so no test crosses models. A role without one is tested
    against the baseline row, which config validation allows only where that is the same
    evaluation (the method reads only the base model, which the pairs share). Each role's
    baseline row is not tested."""
    baseline_method = _baseline_method(spec)
    own = {row["role"]: row["key"] for row in spec["rows"] if row["method"] == baseline_method}
    against = {row["key"]: own.get(row["role"], spec["baseline"]) for row in spec["rows"]}
    return {key: target for key, target in against.items() if key != target}


def families(against: dict[str, str]) -> dict[str, list[str]]:
    """Baseline row key -> the keys of the rows tested against it: a role's family, which Holm
    corrects within (so one role's tests do not make another's stricter)."""
    grouped: dict[str, list[str]] = {}
    for key, target in against.items():
        grouped.setdefault(target, []).append(key)
    return grouped


# --- the table --------------------------------------------------------------------------
@dataclass
class Table:
    name: str
    spec: dict[str, Any]
    cells: dict[tuple[str, str], Cell]  # (row key, dataset)
    against: dict[str, str]  # tested row key -> the key of the row it is tested against
    comparisons: dict[str, dict[tuple[str, str], Comparison]]  # extractor mode -> (row key, dataset)
    resamples: int
    commit: str
    data_hashes: dict[str, str]

    @property
    def primary(self) -> str:
        return self.spec["primary_extractor"]

    @property
    def modes(self) -> list[str]:
        """The primary extractor mode first, then the other."""
        return [self.primary] + [mode for mode in MODES if mode != self.primary]

    @property
    def baseline_row(self) -> dict[str, Any]:
        return self.row(self.spec["baseline"])

    def row(self, key: str) -> dict[str, Any]:
        return next(row for row in self.spec["rows"] if row["key"] == key)

    @property
    def families(self) -> dict[str, list[str]]:
        return families(self.against)

    def accuracies(self, mode: str, row_key: str, dataset: str) -> np.ndarray:
        """Per-seed accuracy (%); dataset `avg`: the unweighted mean over the datasets (the paper's Avg)."""
        if dataset == AVERAGE:
            return np.mean([self.cells[row_key, ds].accuracies(mode) for ds in self.spec["datasets"]], axis=0)
        return self.cells[row_key, dataset].accuracies(mode)


def compare(cell: Cell, baseline: Cell, mode: str, resamples: int) -> Comparison:
    """Paired by example id on correctness averaged over each row's seeds."""
    if cell.ids != baseline.ids:
        raise DataError(
            f"{cell.files[0]} and baseline {baseline.files[0]} hold different examples: "
            f"{id_difference(set(cell.ids), set(baseline.ids))}"
        )
    differences = cell.correct[mode].mean(axis=0) - baseline.correct[mode].mean(axis=0)
    low, high = stats.bootstrap_ci(differences, resamples)
    return Comparison(
        delta=float(differences.mean()) * 100,
        ci_low=low * 100,
        ci_high=high * 100,
        p_value=stats.sign_flip_test(differences, resamples),
    )


def build_table(
    name: str,
    spec: dict[str, Any],
    predictions: str | Path,
    prepared: str | Path,
    resamples: int = stats.DEFAULT_RESAMPLES,
) -> Table:
    """Read and verify every input (all missing files are reported at once), then test each row
    against its own pair role's baseline under each extractor (Holm within each role's family)."""
    missing = [str(path) for path in input_paths(spec, predictions, prepared) if not path.exists()]
    if missing:
        raise DataError(f"table {name}: {len(missing)} input files are missing:\n  " + "\n  ".join(missing))
    tests = {ds: TestSet.read(prepared_test_path(prepared, ds)) for ds in spec["datasets"]}
    work = [(row, ds) for row in spec["rows"] for ds in spec["datasets"]]
    cells = {
        (row["key"], ds): load_cell(row, ds, Path(predictions), tests[ds])
        for row, ds in tqdm(work, desc=f"{name}: reading predictions", unit="cell")
    }
    against = tested_against(spec)
    tested = [(row["key"], ds) for row, ds in work if row["key"] in against]
    comparisons: dict[str, dict[tuple[str, str], Comparison]] = {}
    for mode in MODES:
        comparisons[mode] = {
            (key, ds): compare(cells[key, ds], cells[against[key], ds], mode, resamples)
            for key, ds in tqdm(tested, desc=f"{name}: significance tests ({mode})", unit="test")
        }
        for members in families(against).values():
            apply_holm(comparisons[mode][key, ds] for key in members for ds in spec["datasets"])
    data_hashes = {ds: sha256_file(prepared_test_path(prepared, ds))[:12] for ds in spec["datasets"]}
    return Table(name, spec, cells, against, comparisons, resamples, git_commit(), data_hashes)


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


def _render_block(table: Table, mode: str) -> list[str]:
    """The accuracy table and the differences from the baseline, under one extractor mode."""
    spec, datasets = table.spec, table.spec["datasets"]
    average = spec.get("average", False)
    header = ["Method", *datasets] + (["Avg"] if average else [])
    lines = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * (len(header) - 1) + "|"]
    for row in spec["rows"]:
        cells = []
        for ds in datasets:
            comparison = table.comparisons[mode].get((row["key"], ds))
            mark = SIGNIFICANT_MARK if comparison and comparison.significant else ""
            cells.append(_fmt_cell(table.accuracies(mode, row["key"], ds), mark))
        if average:
            cells.append(_fmt_cell(table.accuracies(mode, row["key"], AVERAGE)))
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")

    per_role = len(table.families) > 1
    label = table.baseline_row["label"]
    if per_role:
        header = (
            f"Difference from its own pair role's {label} (Against) in points [95% CI], p (Holm-adjusted p):"
        )
    else:
        header = f"Difference from {label} in points [95% CI], p (Holm-adjusted p):"
    columns = ["Method", *(["Against"] if per_role else []), *datasets]
    lines += ["", header, ""]
    lines += [
        "| " + " | ".join(columns) + " |",
        "|:--" * (len(columns) - len(datasets)) + "|--:" * len(datasets) + "|",
    ]
    for row in spec["rows"]:
        if row["key"] not in table.against:
            continue
        cells = [table.row(table.against[row["key"]])["label"]] if per_role else []
        for ds in datasets:
            c = table.comparisons[mode][row["key"], ds]
            cells.append(
                f"{c.delta:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}], p={c.p_value:.4f} ({c.p_adjusted:.4f})"
            )
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def _against(table: Table) -> str:
    """What the † note says a row is tested against."""
    label = table.baseline_row["label"]
    if len(table.families) > 1:
        return (
            f"the {label} row of its own pair role on the same dataset: each row is tested against its "
            f"own pair role's {label}, never another pair's"
        )
    return f"{label} on the same dataset"


def _correction(table: Table) -> str:
    """Holm over the whole table, or within each role's family when the table has several."""
    if len(table.families) <= 1:
        n = len(table.comparisons[table.primary])
        return f"Holm–Bonferroni over all {n} comparisons of each extractor's table"
    sizes = ", ".join(
        f"{len(members) * len(table.spec['datasets'])} against {table.row(target)['label']}"
        for target, members in table.families.items()
    )
    return f"Holm–Bonferroni within each role's family of each extractor's table (comparisons: {sizes})"


def _small_n_note(table: Table) -> str | None:
    """Why, at small n, a bootstrap interval can exclude 0 while the exact p is large (e.g. +20.00
    [+6.67, +33.33], p=0.2500 on 5 examples). Shown when the table's smallest dataset has n
    examples with 2^n <= resamples: every test there is exact, with few possible outcomes."""
    n = min(len(cell.ids) for cell in table.cells.values())
    if 2**n > table.resamples:
        return None
    return (
        f"Small n (as few as {n} examples per dataset): an interval that excludes 0 beside a large p is "
        "no contradiction. With m non-zero differences the exact sign-flip test counts 2^m equally "
        "likely sign patterns, and the observed one and its mirror image always reach the observed "
        "|sum|, so p ≥ 2/2^m: 0.25 for m = 3, 0.0625 for m = 5; no cell with fewer than 6 non-zero "
        "differences can reach p < 0.05. The percentile bootstrap only redraws the n observed "
        "differences, so at small n its interval is too narrow: when the m non-zero differences share "
        "a sign, it excludes 0 once a redraw holding none of them, probability ((n−m)/n)^n, is rarer "
        "than 2.5% (m = 3 of n = 5: 1%, while p = 0.25). Read such a cell by its p."
    )


def render_markdown(table: Table) -> str:
    spec, datasets = table.spec, table.spec["datasets"]
    primary, other = table.modes
    lines = [f"# {spec['title']}", "", f"Answers read by the **{primary}** extractor (primary for preset "]
    lines[-1] += f"{spec['preset']}); the {other} extractor's table follows.\n"
    lines += _render_block(table, primary)
    lines += ["", f"## The same cells under the {other} extractor", ""] + _render_block(table, other)

    recorded = sorted({cell.settings for cell in table.cells.values()})
    notes = [
        "Accuracy (%): mean ± sample standard deviation (n−1) over seeds; "
        f"{table.name}.csv also has the population standard deviation (n) and every per-seed accuracy.",
        f"{SIGNIFICANT_MARK}: Holm-adjusted p < {ALPHA} against {_against(table)}. "
        "Test: two-sided paired sign-flip permutation test on per-example correctness averaged over the "
        f"seeds, examples paired by id, {table.resamples:,} resamples from numpy "
        f"default_rng({stats.DEFAULT_SEED}), "
        "p = (b+1)/(R+1); exact instead (the share of all 2^n sign flips of the n non-zero "
        f"differences, identity included) where n ≤ log2(resamples). Correction: {_correction(table)}. "
        f"CI: percentile bootstrap of the mean difference, {table.resamples:,} resamples.",
        f"Seeds: {_fmt_seeds(table)}.",
        "Examples per dataset: "
        + ", ".join(f"{ds} {len(table.cells[spec['baseline'], ds].ids)}" for ds in datasets)
        + ".",
        "Answer extractors: reference = the paper's extractor and vote (docs/protocol.md §9, §10), what "
        "its numbers mean; robust = this project's extractor and a vote that never elects no answer. Both "
        "are recomputed from each record's raw output; the evaluations recorded "
        + ", ".join(f"extractor {e} with vote {v}" for e, v in recorded)
        + ", and every stored prediction was checked against it.",
        "Provenance: every prediction and metrics file was checked to be written for its cell (pair, "
        "dataset, method, seed) with the settings this table's plan resolves for it (sha256 of the "
        "settings), and each metrics file's n, correct and accuracy against its predictions.",
        f"Preset: {spec['preset']}."
        + (f" Rows the preset lacks: {', '.join(spec['dropped_rows'])}." if spec.get("dropped_rows") else ""),
        f"Code: git commit {table.commit}.",
        "Data: sha256 (first 12 hex) of each prepared test.jsonl: "
        + ", ".join(f"{ds} {digest}" for ds, digest in table.data_hashes.items())
        + ".",
    ]
    borrowed = [
        f"{row['label']} on {', '.join(f'{ds} ({by})' for ds, by in row['artefacts_from'].items())}"
        for row in spec["rows"]
        if row.get("artefacts_from")
    ]
    if borrowed:
        notes.append(
            "Trained on another dataset (the dataset whose projector or adapter was used): "
            + "; ".join(borrowed)
            + "."
        )
    if spec.get("average"):
        notes.insert(
            3,
            "Avg: for each seed, the unweighted mean of the dataset accuracies; then mean ± sample std "
            "over seeds. Not tested for significance.",
        )
    small_n = _small_n_note(table)
    if small_n:
        notes.insert(2, small_n)  # right after the test it qualifies
    lines += ["", "Notes:", ""] + [f"{i}. {note}" for i, note in enumerate(notes, start=1)]
    return "\n".join(lines) + "\n"


def _number(value: float) -> float | str:
    return "" if np.isnan(value) else float(value)


def _mode_stats(table: Table, mode: str, row_key: str, dataset: str) -> dict[str, Any]:
    mean, std, std_population = stats.mean_and_std(table.accuracies(mode, row_key, dataset))
    comparison = table.comparisons[mode].get((row_key, dataset))
    values = {"mean": _number(mean), "std": _number(std), "std_population": _number(std_population)}
    for key in ("delta", "ci_low", "ci_high", "p_value", "p_adjusted"):
        values[key] = _number(getattr(comparison, key)) if comparison else ""
    values["significant"] = comparison.significant if comparison else ""
    return values


def csv_rows(table: Table) -> list[dict[str, Any]]:
    """One row per (table row, dataset), plus an `avg` row when the table has an Avg column.

    The unprefixed statistics are the primary extractor's (`extractor` names it); `reference_*`
    and `robust_*` hold each extractor's, so both are always there under stable names.
    """
    seeds = sorted({seed for row in table.spec["rows"] for seed in row["seeds"]})
    datasets = table.spec["datasets"] + ([AVERAGE] if table.spec.get("average") else [])
    out = []
    for row in table.spec["rows"]:
        for ds in datasets:
            cells = [table.cells[row["key"], d] for d in (table.spec["datasets"] if ds == AVERAGE else [ds])]
            by_mode = {mode: _mode_stats(table, mode, row["key"], ds) for mode in MODES}
            record = {
                "table": table.name,
                "row": row["key"],
                "label": row["label"],
                "role": row["role"],
                "pair": row["pair"],
                "method": row["method"],
                "dataset": ds,
                "baseline_row": table.against.get(row["key"], "") if ds != AVERAGE else "",
                **by_mode[table.primary],
                "n_seeds": len(row["seeds"]),
                "n_examples": sum(len(cell.ids) for cell in cells),
                "extractor": table.primary,
            }
            accuracies = table.accuracies(table.primary, row["key"], ds)
            per_seed = dict(zip(row["seeds"], accuracies, strict=True))
            record.update({f"acc_seed{s}": _number(per_seed[s]) if s in per_seed else "" for s in seeds})
            for mode in MODES:
                record.update({f"{mode}_{key}": by_mode[mode][key] for key in CSV_STATS})
            out.append(record)
    return out


def metrics(table: Table) -> dict[str, dict[str, float]]:
    """{"acc": {row key: mean accuracy %}} under the primary extractor: the Avg column where the
    table has one, else its only (or first) dataset. Few short names keep `dvc exp show` legible
    (`acc.softcot`; a bare `softcot` would collide with the `softcot` dependency's column); the csv
    has every dataset and both extractors."""
    dataset = AVERAGE if table.spec.get("average") else table.spec["datasets"][0]
    return {
        "acc": {
            row["key"]: round(float(table.accuracies(table.primary, row["key"], dataset).mean()), 4)
            for row in table.spec["rows"]
        }
    }


def write_plot(path: Path, table: Table) -> None:
    """Tables whose rows sit at a position `x` (e.g. the thought-token count) plot accuracy against
    x with the baseline dashed; the others plot one bar group per dataset. Error bars: sample std."""
    fig, ax = tables.pyplot().subplots(figsize=(6, 4))
    if any("x" in row for row in table.spec["rows"]):
        _plot_against_x(ax, table)
    else:
        _plot_bars(ax, table)
    ax.set_ylabel(f"accuracy (%), {table.primary} extractor, mean ± sample std over seeds")
    ax.set_title(table.spec["title"], fontsize=9)
    ax.legend(fontsize=8)
    tables.save_figure(fig, path)


def _summary(table: Table, row_key: str, dataset: str) -> tuple[float, float]:
    mean, std, _ = stats.mean_and_std(table.accuracies(table.primary, row_key, dataset))
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
        baseline = table.accuracies(table.primary, table.spec["baseline"], ds).mean()
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
    return tables.write_reports(table, outputs, render_markdown, csv_rows, metrics, write_plot)


# --- command line -----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="table name in params.yaml `tables`")
    parser.add_argument(
        "--params", default="params.yaml", help="configuration file (ignored with --settings)"
    )
    parser.add_argument("--settings", help="the table spec as JSON (Snakemake passes it); overrides --params")
    parser.add_argument("--predictions", default="results/predictions", help="root of the prediction files")
    parser.add_argument("--prepared", default="data/prepared", help="root of the prepared datasets")
    for suffix in REPORT_SUFFIXES:
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
    outputs = {suffix: getattr(args, suffix) for suffix in REPORT_SUFFIXES}
    for path in write_reports(table, outputs):
        print(path)
    return 0
