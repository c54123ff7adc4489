"""`softcot probe table`: per-example NLL files -> reports/thought_probe.{md,csv,json,png}.

Per condition the mean NLL per target token with its bootstrap CI; every comparison of
softcot.probe.conditions.comparisons (`own` against every other of the six, each centred projector's
own thoughts against its shuffled and mean thoughts and no hint) a paired sign-flip permutation
test, Holm over the table. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softcot import stats, tables
from softcot.errors import ConfigError, DataError
from softcot.io import read_jsonl, sha256_file
from softcot.probe.conditions import CENTER_NAMES, comparisons, conditions
from softcot.tables import ALPHA, SIGNIFICANT_MARK, Comparison, apply_holm, git_commit


@dataclass
class DatasetResult:
    """One dataset's per-example NLL per token, aligned by example (file order)."""

    dataset: str
    ids: list[str]
    tokens: np.ndarray  # [examples] scored tokens
    nll: dict[str, np.ndarray]  # condition -> [examples] mean NLL per target token
    nll_sum: dict[str, np.ndarray]  # condition -> [examples] summed NLL
    record: dict[str, Any]  # the probe projector's training record
    centred_records: dict[str, dict[str, Any]]  # center -> each centred projector's record
    examples_sha256: str
    fit_sha256: str


@dataclass
class ProbeTable:
    spec: dict[str, Any]
    results: dict[str, DatasetResult]
    intervals: dict[tuple[str, str], tuple[float, float]]  # (dataset, condition) -> CI of the mean
    # (dataset, reference, condition) -> reference minus condition
    comparisons: dict[tuple[str, str, str], Comparison]
    resamples: int
    commit: str


def read_per_example(
    path: Path,
    dataset: str,
    record: dict,
    examples: Path,
    fit: Path,
    centred_records: dict[str, dict[str, Any]] | None = None,
) -> DatasetResult:
    """One dataset's per-example file, holding every condition of the centred projectors whose
    records `centred_records` maps (center -> record; none: the six conditions alone)."""
    centred_records = centred_records or {}
    keys = [key for key, _ in conditions(list(centred_records))]
    ids, tokens, nll, sums = [], [], {k: [] for k in keys}, {k: [] for k in keys}
    for lineno, row in read_jsonl(path):
        try:
            ids.append(str(row["id"]))
            tokens.append(int(row["target_tokens"]))
            for key in keys:
                nll[key].append(float(row["nll"][key]))
                sums[key].append(float(row["nll_sum"][key]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: not a probe record ({type(exc).__name__}: {exc})") from exc
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise DataError(f"{path}: expected at least 2 records with distinct ids, got {len(ids)}")
    return DatasetResult(
        dataset,
        ids,
        np.array(tokens),
        {k: np.array(v) for k, v in nll.items()},
        {k: np.array(v) for k, v in sums.items()},
        record,
        centred_records,
        sha256_file(examples)[:12],
        sha256_file(fit)[:12],
    )


def build_table(
    spec: dict[str, Any],
    per_example: Sequence[Path],
    records: Sequence[Path],
    examples: Sequence[Path],
    fits: Sequence[Path],
    centred_records: Sequence[Path] = (),
    resamples: int = stats.DEFAULT_RESAMPLES,
) -> ProbeTable:
    """Per condition: mean NLL per token and its bootstrap CI over examples; every comparison of
    `comparisons(spec["centred"])`: paired sign-flip permutation test on per-example NLL, Holm over
    the table. `centred_records`: per dataset in order, the record of each of spec["centred"]."""
    centred = list(spec["centred"])
    lists = (per_example, records, examples, fits)
    n_datasets = len(spec["datasets"])
    if any(len(paths) != n_datasets for paths in lists) or len(centred_records) != n_datasets * len(centred):
        raise ConfigError(
            "pass one per-example file, record, examples file and fit file per dataset, and per dataset "
            f"one record per centred projector ({centred})"
        )
    missing = [str(p) for paths in (*lists, centred_records) for p in paths if not Path(p).exists()]
    if missing:
        raise DataError(f"{len(missing)} probe inputs are missing:\n  " + "\n  ".join(missing))
    results = {}
    for i, (dataset, path, record, held_out, fit) in enumerate(zip(spec["datasets"], *lists, strict=True)):
        own_records = centred_records[i * len(centred) : (i + 1) * len(centred)]
        centred_training = {
            center: _read_record(Path(p)) for center, p in zip(centred, own_records, strict=True)
        }
        results[dataset] = read_per_example(
            Path(path), dataset, _read_record(Path(record)), Path(held_out), Path(fit), centred_training
        )
    intervals, tests = {}, {}
    for dataset, result in results.items():
        for key, _ in conditions(centred):
            intervals[dataset, key] = stats.bootstrap_ci(result.nll[key], resamples)
        for reference, key in comparisons(centred):
            differences = result.nll[reference] - result.nll[key]
            low, high = stats.bootstrap_ci(differences, resamples)
            tests[dataset, reference, key] = Comparison(
                float(differences.mean()), low, high, stats.sign_flip_test(differences, resamples)
            )
    apply_holm(tests.values())
    return ProbeTable(spec, results, intervals, tests, resamples, git_commit())


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg})") from exc


def _row_references(centred: Sequence[str]) -> dict[str, str]:
    """condition -> the reference its row in the NLL table is marked against: its first comparison
    (the six: the paper projector's own; a centred projector's: that projector's own)."""
    references: dict[str, str] = {}
    for reference, key in comparisons(centred):
        references.setdefault(key, reference)
    return references


def render_markdown(table: ProbeTable) -> str:
    spec, datasets = table.spec, table.spec["datasets"]
    labels = dict(conditions(spec["centred"]))
    references = _row_references(spec["centred"])
    where = (
        "held-out test examples" if spec["heldout"] == "test" else "the validation slice of the train split"
    )
    lines = [
        f"# Thought probe: NLL per target token (nats) of the gold rationale and answer, pair "
        f"{spec['pair']}, {where}",
        "",
        "| Condition | " + " | ".join(datasets) + " |",
        "|:--" + "|--:" * len(datasets) + "|",
    ]
    for key, label in labels.items():
        cells = []
        for dataset in datasets:
            mean = float(table.results[dataset].nll[key].mean())
            low, high = table.intervals[dataset, key]
            comparison = table.comparisons.get((dataset, references.get(key), key))
            mark = SIGNIFICANT_MARK if comparison and comparison.significant else ""
            cells.append(f"{mean:.4f} [{low:.4f}, {high:.4f}]{mark}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    tested = comparisons(spec["centred"])
    for reference in dict.fromkeys(reference for reference, _ in tested):
        lines += [
            "",
            f"{labels[reference]} minus each condition, nats per token [95% CI], p (Holm-adjusted p); "
            "negative: own thoughts make the gold target more likely:",
            "",
            "| Condition | " + " | ".join(datasets) + " |",
            "|:--" + "|--:" * len(datasets) + "|",
        ]
        for key in (key for ref, key in tested if ref == reference):
            cells = []
            for dataset in datasets:
                c = table.comparisons[dataset, reference, key]
                interval = f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
                cells.append(f"{c.delta:+.4f} {interval}, p={c.p_value:.4f} ({c.p_adjusted:.4f})")
            lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""] + [f"{i}. {note}" for i, note in enumerate(_notes(table), start=1)]
    return "\n".join(lines) + "\n"


def _losses(record: dict[str, Any]) -> str:
    return "mean loss per epoch " + ", ".join(f"{loss:.4f}" for loss in record.get("epoch_losses", []))


def _training_note(dataset: str, record: dict[str, Any], validation: int) -> str:
    settings = record.get("settings", {})
    return (
        f"{dataset}: {record.get('examples')} examples (the first of the train split without its last "
        f"{validation}), {settings.get('epochs')} epoch(s), {record.get('steps')} steps of batch "
        f"{settings.get('batch_size')}, lr {settings.get('lr')} with linear decay, "
        f"N={settings.get('num_thought_tokens')} at training, seed {settings.get('seed')}; {_losses(record)}"
    )


def _centred_note(centred: Sequence[str]) -> str:
    if not centred:
        return ""
    return (
        " Centred projectors ("
        + ", ".join(f"{CENTER_NAMES[c]}: train.projection_center {c}" for c in centred)
        + "): trained exactly as the probe projector, except that before the projection `mean` "
        "subtracts the per-dimension mean of its training slot states (over every training example "
        "and slot position) and `standardize` also divides by their per-dimension standard deviation "
        "(floored; both stored in the checkpoint); each scored with its own thoughts, the same "
        "derangement's other example's thoughts and its mean training thoughts, its own thoughts "
        "tested against the other two and against no hint."
    )


def _notes(table: ProbeTable) -> list[str]:
    spec, datasets = table.spec, table.spec["datasets"]
    n_tests = len(table.comparisons)
    heldout = (
        "the first examples of each test split"
        if spec["heldout"] == "test"
        else f"the last {spec['validation']} examples of each train split (never trained on)"
    )
    models = spec["models"]
    return [
        "Cell: the mean over examples of each example's mean negative log-likelihood per target token "
        "(nats), teacher-forced; [95% CI]: percentile bootstrap over examples, "
        f"{table.resamples:,} resamples. Target: the gold rationale and answer in the training target "
        "format (the assistant turn as the projector is trained on it); every condition scores the same "
        "tokens: "
        + ", ".join(f"{ds} {int(table.results[ds].tokens.sum()):,}" for ds in datasets)
        + " in all.",
        f"Conditions: the base prompt without the hint (Zero-Shot CoT); with the hint and "
        f"N={spec['num_thought_tokens']} thought tokens whose slot holds the base model's UNK embeddings "
        "(CoT-UNK), the example's assistant thoughts through the untrained projector (its seeded "
        "initial weights), through the trained projector (own), another held-out example's thoughts "
        f"through it (a fixed derangement: Sattolo cycle from numpy default_rng({spec['seed']}), no "
        "example keeps its own), or the trained projector's thoughts averaged over its training "
        "examples (one soft prompt for all questions). The prompt before the slot is computed once "
        "per example and its KV cache reused." + _centred_note(spec["centred"]),
        f"{SIGNIFICANT_MARK}: Holm-adjusted p < {ALPHA} for own thoughts against that condition (the "
        "own thoughts of the same projector). Test: "
        "two-sided paired sign-flip permutation test on per-example NLL per token (own minus "
        f"condition), {table.resamples:,} resamples from numpy default_rng({stats.DEFAULT_SEED}), "
        f"p = (b+1)/(R+1). Correction: Holm–Bonferroni over all {n_tests} comparisons of this table. "
        f"CI of a difference: percentile bootstrap, {table.resamples:,} resamples.",
        f"Examples ({heldout}): " + ", ".join(f"{ds} {len(table.results[ds].ids)}" for ds in datasets) + ".",
        "Probe projector (its own artefact, not the main tables'): "
        + "; ".join(_training_note(ds, table.results[ds].record, spec["validation"]) for ds in datasets)
        + ". Its settings were chosen on the validation slice (reports/thought_probe_validation.md), "
        "never on the test split."
        + "".join(
            f" {CENTER_NAMES[center]} projector (train.projection_center {center}), the same training: "
            + "; ".join(f"{ds} {_losses(table.results[ds].centred_records[center])}" for ds in datasets)
            + "."
            for center in spec["centred"]
        ),
        f"Pair: {spec['pair']} (assistant {models['assistant']}, base {models['base']}); preset "
        f"{spec['preset']}; prompt set {spec['train']['prompt_set']}.",
        f"Code: git commit {table.commit}.",
        "Data: sha256 (first 12 hex) of the scored file and of the fit part trained on: "
        + ", ".join(
            f"{ds} {table.results[ds].examples_sha256} / {table.results[ds].fit_sha256}" for ds in datasets
        )
        + ". Per-example values: results/probe/{pair}/{dataset}/"
        + f"{spec['heldout']}/per_example.jsonl.",
    ]


def csv_rows(table: ProbeTable) -> list[dict[str, Any]]:
    """One row per (dataset, condition), its comparison (`reference` minus it) that of its row in
    the markdown table; then one row per further comparison (a centred projector's own thoughts
    against no hint), repeating the condition's own numbers. Every number at full precision."""
    centred = table.spec["centred"]
    labels = dict(conditions(centred))
    first = _row_references(centred)
    further = [(reference, key) for reference, key in comparisons(centred) if first[key] != reference]
    lines = [(first.get(key), key) for key in labels] + further
    rows = []
    for dataset, result in table.results.items():
        for reference, key in lines:
            c = table.comparisons.get((dataset, reference, key))
            low, high = table.intervals[dataset, key]
            rows.append(
                {
                    "table": table.spec["name"],
                    "pair": table.spec["pair"],
                    "dataset": dataset,
                    "condition": key,
                    "label": labels[key],
                    "reference": reference or "",
                    "n_examples": len(result.ids),
                    "n_tokens": int(result.tokens.sum()),
                    "mean_nll": float(result.nll[key].mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "pooled_nll": float(result.nll_sum[key].sum() / result.tokens.sum()),
                    "own_minus": c.delta if c else "",
                    "diff_ci_low": c.ci_low if c else "",
                    "diff_ci_high": c.ci_high if c else "",
                    "p_value": c.p_value if c else "",
                    "p_adjusted": c.p_adjusted if c else "",
                    "significant": c.significant if c else "",
                }
            )
    return rows


def metrics(table: ProbeTable) -> dict[str, dict[str, float]]:
    """{condition: {dataset: mean NLL per token}} for `dvc exp show`."""
    return {
        key: {ds: round(float(r.nll[key].mean()), 6) for ds, r in table.results.items()}
        for key, _ in conditions(table.spec["centred"])
    }


def write_plot(path: Path, table: ProbeTable) -> None:
    """Per dataset, the conditions side by side: mean NLL per token with its 95% bootstrap CI."""
    datasets = table.spec["datasets"]
    fig, ax = tables.pyplot().subplots(figsize=(max(6, 2.2 * len(datasets) + 3), 4))
    shown = conditions(table.spec["centred"])
    width = 0.8 / len(shown)
    for i, (key, label) in enumerate(shown):
        xs = [d + (i - (len(shown) - 1) / 2) * width for d in range(len(datasets))]
        means = [float(table.results[ds].nll[key].mean()) for ds in datasets]
        lows = [m - table.intervals[ds, key][0] for m, ds in zip(means, datasets, strict=True)]
        highs = [table.intervals[ds, key][1] - m for m, ds in zip(means, datasets, strict=True)]
        ax.errorbar(xs, means, yerr=[lows, highs], fmt="o", capsize=3, label=label)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("NLL per target token (nats), mean and 95% CI")
    ax.set_title(f"Thought probe, pair {table.spec['pair']} ({table.spec['heldout']})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    tables.save_figure(fig, path)


def write_reports(table: ProbeTable, outputs: dict[str, Path]) -> list[Path]:
    """Write the md, csv, json and png named in `outputs`; return their paths."""
    return tables.write_reports(table, outputs, render_markdown, csv_rows, metrics, write_plot)
