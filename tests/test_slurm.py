"""The SLURM profile on a real single-node Slurm cluster (tests/slurm_cluster.py), not a mock.

A small tiny-preset target (data preparation, one projector, one evaluation split into two shards
and their merge) runs through workflow/profiles/slurm; its outputs must equal those of a local,
unsharded run of the same target byte for byte (metrics files: all but the measured speed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from slurm_cluster import CONF, SlurmCluster, install

ROOT = Path(__file__).resolve().parent.parent
MIRROR = Path(os.environ.get("SOFTCOT_DATA_MIRROR", ROOT.parent / "shared" / "datasets"))
SEEDS = (41, 42)
TARGET = "results/predictions/tiny/gsm8k/softcot"
COMPARED = [
    "data/prepared/gsm8k/test.jsonl",
    "data/prepared/gsm8k/train.jsonl",
    "results/projectors/tiny/gsm8k/projector.safetensors",
    *[f"{TARGET}/seed{seed}.jsonl" for seed in SEEDS],
]

pytestmark = pytest.mark.slow


def workdir(tmp_path: Path, name: str, shards: int, batch_size: int | str) -> Path:
    """A run directory: params.yaml sized down (2 seeds, 3 examples, 8 tokens, one short epoch) with
    `shards` evaluation shards, and the checkout's materialized models linked in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval"]["seeds"] = list(SEEDS)
    tiny = params["presets"]["tiny"]
    tiny["train"].update(limit=3, epochs=1, batch_size=3)
    tiny["eval"].update(limit=3, max_new_tokens=8, shards=shards, batch_size=batch_size)
    directory = tmp_path / name
    (directory / "results").mkdir(parents=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    models = ROOT / "results" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (directory / "results" / "models").symlink_to(models)
    return directory


def snakemake(directory: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    targets = [f"{TARGET}/seed{seed}.jsonl" for seed in SEEDS]
    return subprocess.run(
        ["snakemake", "--snakefile", str(ROOT / "Snakefile"), *args, *targets],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def test_a_tiny_target_through_the_slurm_profile_equals_a_local_run(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("starting a Slurm cluster (apt-get install, munged, slurmctld, slurmd) needs root")
    if CONF.exists():
        pytest.skip(f"{CONF} exists: this machine has its own Slurm, which the test leaves alone")
    install()
    env = dict(os.environ)
    if MIRROR.is_dir():
        env["SOFTCOT_DATA_MIRROR"] = str(MIRROR)
    # One torch thread per evaluation in both runs (equal threads, equal float sums), and one CPU
    # per SLURM job, so the two shards run side by side on a 2-core node.
    threads = ("--max-threads", "1")

    # Locally and unsharded first: it also materializes the models if the checkout lacks them.
    local = workdir(tmp_path, "local", shards=1, batch_size=32)
    result = snakemake(local, "--cores", str(os.cpu_count() or 1), *threads, env=env)
    assert result.returncode == 0, result.stderr[-4000:]

    # Sharded, and with `batch_size: auto` (a string resource through SLURM; 32 on a CPU).
    cluster_run = workdir(tmp_path, "slurm", shards=2, batch_size="auto")
    with SlurmCluster() as cluster:
        result = snakemake(
            cluster_run,
            "--profile",
            str(ROOT / "workflow" / "profiles" / "slurm"),
            # No accounting database on this cluster: sacct knows no job state (see the profile).
            "--slurm-status-command",
            "squeue",
            "--slurm-init-seconds-before-status-checks",
            "2",
            *threads,
            env=dict(env, SLURM_CONF=str(cluster.conf)),  # jobs inherit it, and the data mirror
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-6000:] + cluster.logs()

    # Every job went through sbatch ("Job N has been submitted with SLURM jobid M (log: .../rule_R/...").
    submitted = re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/rule_(\w+)/", log)
    trained = [rule for rule in submitted if rule.startswith("train")]  # train_projector
    assert len(trained) == 1 and len(submitted) == 6, log
    assert sorted(set(submitted) - set(trained)) == ["evaluate_shard", "merge_shards", "prepare_split"], log
    assert submitted.count("evaluate_shard") == 2 and submitted.count("prepare_split") == 2
    assert (cluster_run / TARGET / "shards" / "2-of-2.jsonl").is_file()
    shard_log = cluster_run / "logs" / "predictions" / "tiny" / "gsm8k" / "softcot" / "shard1-of-2.log"
    assert "batch size auto -> 32 rows" in shard_log.read_text()
    assert not (local / TARGET / "shards").exists()
    for path in COMPARED:
        assert (cluster_run / path).read_bytes() == (local / path).read_bytes(), path
    for seed in SEEDS:
        metrics = [
            json.loads((run / TARGET / f"seed{seed}.metrics.json").read_text())
            for run in (local, cluster_run)
        ]
        for record in metrics:
            record.pop("tokens_per_second")
        assert metrics[0] == metrics[1]
