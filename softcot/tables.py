"""What every significance-tested table shares: the main tables (softcot.report) and the thought
probe's (softcot.probe.table) test cells against a reference the same way, mark and footnote the
result the same way, and write the same four reports (md, csv, json, png).

It sits below the commands: no softcot.plan, torch or transformers here.
"""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from softcot import stats
from softcot.io import atomic_path, write_json_atomic, write_text_atomic

ALPHA = 0.05
SIGNIFICANT_MARK = "†"
REPORT_SUFFIXES = ("md", "csv", "json", "png")

T = TypeVar("T")


@dataclass
class Comparison:
    """A cell against its reference: the mean paired difference in the table's unit (points for
    the main tables, nats per token for the probe), its bootstrap CI, the sign-flip p-value, and
    the Holm-adjusted p-value once `apply_holm` has run over the table."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.p_adjusted < ALPHA


def apply_holm(comparisons: Iterable[Comparison]) -> None:
    """Set each comparison's p_adjusted, Holm–Bonferroni over exactly these: the family a table
    corrects for is whatever the caller passes (one table, or one extractor's table)."""
    family = list(comparisons)
    adjusted = stats.holm_adjust([c.p_value for c in family])
    for comparison, p_adjusted in zip(family, adjusted, strict=True):
        comparison.p_adjusted = float(p_adjusted)


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the working tree, "+dirty" when it has changes, "unknown" outside git.

    `reports/` is not looked at: it holds the tables being written, and Snakemake deletes a
    table's outputs before its job, so the tracked `reports/main_table.json` (DVC's baseline
    metrics) would make every run from a clean clone read as dirty."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--", ":/", ":(top,exclude)reports").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The columns are the first row's keys, in its order: every row of a table has the same."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: tables are drawn without a display, and matplotlib
    is imported only by the step that plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG atomically and close it; without matplotlib's version in the metadata,
    so the same table gives the same bytes under another matplotlib."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    pyplot().close(fig)


def write_reports(
    table: T,
    outputs: Mapping[str, Path],
    markdown: Callable[[T], str],
    rows: Callable[[T], list[dict[str, Any]]],
    metrics: Callable[[T], dict[str, Any]],
    plot: Callable[[Path, T], None],
) -> list[Path]:
    """Write the md, csv, json and png named in `outputs` (each file atomically, in that order)
    from a table and its four renderers; return their paths."""
    write_text_atomic(outputs["md"], markdown(table))
    write_csv(outputs["csv"], rows(table))
    write_json_atomic(outputs["json"], metrics(table))
    plot(outputs["png"], table)
    return [outputs[suffix] for suffix in REPORT_SUFFIXES]
