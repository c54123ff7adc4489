"""`softcot compare [TABLE]`: DVC's experiments side by side, within a terminal's width.

`dvc exp show` makes a column of every value in params.yaml (about 260) and, at any usual width,
squeezes them and then the metrics into `…`: DVC has no setting that hides columns by default. This
reads the same data (`dvc exp show --json`) and prints one column per experiment, one line per
params.yaml value that differs between them, and one line per row of reports/TABLE.json (the row's
accuracy in %, as `dvc exp show` would show it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from softcot.errors import ConfigError

PARAMS = "params.yaml"
MISSING = "-"


@dataclass
class Column:
    """One experiment (or the workspace, or a commit): its name and flattened values."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", nargs="?", default="main_table", help="the table (default: %(default)s)")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, as DVC names its columns; lists stay whole."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _column(name: str, data: dict[str, Any], metrics_file: str) -> Column:
    params = data.get("params", {}).get(PARAMS, {}).get("data", {})
    metrics = data.get("metrics", {}).get(metrics_file, {}).get("data", {})
    return Column(name, flatten(params), flatten(metrics))


def columns(shown: list[dict[str, Any]], table: str) -> list[Column]:
    """The workspace, each commit and its experiments, in `dvc exp show --json` order."""
    metrics_file = f"reports/{table}.json"
    found = []
    for commit in shown:
        name = commit["name"] or (commit["rev"] if commit["rev"] == "workspace" else commit["rev"][:7])
        found.append(_column(name, commit["data"] or {}, metrics_file))
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                label = rev["name"] or experiment.get("name") or rev["rev"][:7]
                found.append(_column(label, rev["data"] or {}, metrics_file))
    return found


def differing(values: list[dict[str, Any]]) -> list[str]:
    """The keys, in first-seen order, whose value is not the same in every column."""
    keys = list(dict.fromkeys(key for column in values for key in column))
    return [key for key in keys if len({json.dumps(v.get(key, MISSING)) for v in values}) > 1]


def _cell(value: Any) -> str:
    return MISSING if value is None else str(value)


def render(found: list[Column], table: str) -> str:
    """A text table: a line per changed parameter, then per metric of the table."""
    params = differing([column.params for column in found])
    metrics = list(dict.fromkeys(key for column in found for key in column.metrics))
    lines = [("", *(column.name for column in found))]
    lines += [(key, *(_cell(column.params.get(key, MISSING)) for column in found)) for key in params]
    if not params:
        lines.append(("(no parameter differs)", *("" for _ in found)))
    lines += [
        (f"{table}: {key}", *(_cell(column.metrics.get(key, MISSING)) for column in found)) for key in metrics
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def run(args: argparse.Namespace) -> int:
    if shutil.which("dvc") is None:
        raise ConfigError("dvc is not on PATH: softcot compare reads `dvc exp show --json`")
    result = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"`dvc exp show --json` failed: {result.stderr.strip()}")
    found = columns(json.loads(result.stdout), args.table)
    if not any(column.metrics for column in found):
        raise ConfigError(f"no experiment shown by DVC has reports/{args.table}.json: build it first")
    print(render(found, args.table))
    return 0
