"""benchmarks/gpu_eval.py runs its GPU code on scaled-down stand-ins without a GPU, so CI exercises it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_eval", ROOT / "benchmarks" / "gpu_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_benchmark_prints_throughput_and_the_gpu_hours_of_every_paper_table(capsys):
    benchmark = load_benchmark()
    assert benchmark.main(["--pairs", "llama", "--batch-sizes", "2", "auto", "--scaled-down"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scaled_down"] is True and report["settings"]["early_stop"] is False
    llama = report["pairs"]["llama"]
    assert set(llama["eval_by_batch_size"]) == {"2", f"{llama['auto_batch_size']} (auto)"}
    assert all(run["tokens_per_s"] > 0 for run in llama["eval_by_batch_size"].values())
    assert llama["train_tokens_per_s"] > 0 and llama["assistant_tokens_per_s"] > 0
    assert {"main_table", "qwen_table", "thought_tokens", "assistant_size", "self_consistency"} <= set(
        report["tables"]
    )
    for table in report["tables"].values():
        assert 0 < table["eval_gpu_hours"] <= table["eval_gpu_hours_upper"]
        assert table["gpu_hours"] == pytest.approx(
            table["eval_gpu_hours"] + table["train_gpu_hours"], abs=0.02
        )
    total = report["total"]
    assert total["gpu_hours"] <= sum(t["gpu_hours"] for t in report["tables"].values())  # shared work once
