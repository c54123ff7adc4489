"""What a tiny table's jobs cost before they do any work: one process start each.

Every Snakemake job of the tiny main table is its own process that imports torch and transformers
and loads its models before the first token. This measures that start-up (a fresh interpreter that
imports what `softcot evaluate` imports and loads the tiny base model, `--repeats` times) and, when
a run's `logs/` are there, sets it against the run's jobs: how many paid it, and what share of the
summed job time it is. Prints one JSON object. A benchmark, not a test:

    python benchmarks/job_startup.py [--logs logs] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_MODEL = "smollm2-135m-instruct"
LOADING_JOBS = ("predictions", "projectors", "adapters")  # top folders of their logs
# What an evaluation job does before its first batch, minus reading its inputs.
STARTUP = f"""
import torch
torch.set_num_threads(1)
import softcot.commands.evaluate
from softcot.models import load_model
load_model({BASE_MODEL!r}, {str(ROOT / "results" / "models")!r}, device="cpu")
"""


def startup_seconds(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", STARTUP], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def job_walls(logs: Path) -> dict[str, list[float]]:
    """Wall seconds of every job that left a benchmark file, by the top folder of its log."""
    walls: dict[str, list[float]] = {}
    for path in sorted(logs.rglob("*.bench.tsv")):
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        if rows:
            walls.setdefault(path.relative_to(logs).parts[0], []).append(float(rows[-1]["s"]))
    return walls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=ROOT / "logs", help="a finished run's logs/ folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (ROOT / "results" / "models" / BASE_MODEL).is_dir():
        sys.exit(f"materialize the tiny base first: softcot materialize {BASE_MODEL}")
    times = startup_seconds(args.repeats)
    startup = statistics.median(times)
    report: dict = {"startup_s": [round(t, 2) for t in times], "startup_median_s": round(startup, 2)}
    walls = job_walls(args.logs) if args.logs.is_dir() else {}
    if walls:
        # Training and evaluation jobs load materialized models; data, materialize and table jobs
        # start differently (and are few), so they are left out of the floor.
        loading = sum(len(v) for k, v in walls.items() if k in LOADING_JOBS)
        total = sum(sum(v) for v in walls.values())
        report.update(
            jobs={k: len(v) for k, v in walls.items()},
            job_seconds={k: round(sum(v), 1) for k, v in walls.items()},
            total_job_s=round(total, 1),
            startup_floor_s=round(loading * startup, 1),
            startup_share=round(loading * startup / total, 3),
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
