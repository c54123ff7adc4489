"""params.yaml under `dvc exp run -S`: DVC writes the file back through ruamel.yaml, so it is kept in
the layout DVC writes (a valid -S changes one line), and a value that fails the check is undone
before any report is touched."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dvc.utils.hydra import apply_overrides

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ("main_table.md", "main_table.csv", "main_table.png", "main_table.json")


def changed_lines(before: str, after: str) -> list[str]:
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def test_dvc_writes_params_yaml_back_byte_for_byte(tmp_path):
    """A -S that sets a value to what it already is rewrites every key and list through DVC's
    serializer; a file that is not in DVC's layout would come back changed."""
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    apply_overrides(path, ["preset=tiny"])
    assert changed_lines((ROOT / "params.yaml").read_text(), path.read_text()) == []


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("eval.num_thought_tokens=6", "num_thought_tokens: 6"),
        ("presets.tiny.eval.limit=16", "limit: 16"),
        ("train.lr=0.001", "lr: 0.001"),
        ("data.mirror=/data/mirror", "mirror: /data/mirror"),
        ("train.limit=8", "limit: 8"),
    ],
)
def test_a_set_param_changes_exactly_its_line(tmp_path, override, line):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    apply_overrides(path, [override])
    changed = changed_lines((ROOT / "params.yaml").read_text(), path.read_text())
    assert len(changed) == 2 and changed[0].startswith("-") and changed[1].startswith("+"), changed
    assert changed[1][1:].split("#")[0].strip() == line


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def experiment_repo(tmp_path):
    """A git + DVC repository with the project's params.yaml, dvc.yaml and workflow, and a built
    table's reports; `snakemake` on its PATH is a stub that records its arguments."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("params.yaml", "dvc.yaml", "Snakefile"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "workflow", repo / "workflow")
    (repo / "softcot").mkdir()  # the stages' code dependency; the installed package runs
    (repo / "softcot" / "__init__.py").write_text("")
    (repo / "reports").mkdir()
    shutil.copy(ROOT / "reports" / ".gitignore", repo / "reports" / ".gitignore")  # DVC's outputs
    for name in REPORTS:
        (repo / "reports" / name).write_text(f"{name}: the baseline's report\n")
    stub = tmp_path / "bin" / "snakemake"
    stub.parent.mkdir()
    stub.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path / "snakemake_args"}\n'
        """echo '{"acc": {"cot": 12.0, "softcot": 9.5}}' > reports/main_table.json\n"""
    )
    stub.chmod(0o755)
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "Test")
    git(repo, "config", "user.email", "test@example.org")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    # dvc.lock records the reports as this table's outputs, as after a successful build.
    subprocess.run(["dvc", "commit", "-fq", "table@main_table"], cwd=repo, check=True, timeout=300)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    return repo, {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}


def exp_run(repo: Path, env: dict, override: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dvc", "exp", "run", "-S", override, "table@main_table"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in ("params.yaml", *(f"reports/{r}" for r in REPORTS))}


def test_an_invalid_experiment_leaves_params_and_reports_as_they_were(experiment_repo):
    repo, env = experiment_repo
    before = snapshot(repo)
    result = exp_run(repo, env, "eval.num_thought_tokens=0")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "softcot dvc-stage: error:" in output and "num_thought_tokens" in output
    assert "params.yaml is back as it was before this experiment" in output
    assert snapshot(repo) == before, output
    assert not (repo.parent / "snakemake_args").exists()  # nothing was built


def test_a_valid_experiment_changes_one_line_and_runs_the_tables_target(experiment_repo):
    repo, env = experiment_repo
    before = (repo / "params.yaml").read_text()
    result = exp_run(repo, env, "eval.num_thought_tokens=6")
    assert result.returncode == 0, result.stdout + result.stderr
    changed = changed_lines(before, (repo / "params.yaml").read_text())
    assert [line.split("#")[0].rstrip() for line in changed] == [
        "-  num_thought_tokens: 4",
        "+  num_thought_tokens: 6",
    ]
    args = (repo.parent / "snakemake_args").read_text().split()
    assert args[0] == "reports/main_table.md" and "mtime" not in args
    # A failed experiment after it: the value goes back to the first experiment's, left in the workspace.
    after = snapshot(repo)
    failed = exp_run(repo, env, "eval.num_thought_tokens=0")
    assert failed.returncode != 0 and "is back as it was" in failed.stdout + failed.stderr
    assert snapshot(repo) == after
    # softcot compare: the experiment beside its baseline, the changed value and each row's accuracy
    shown = subprocess.run(
        ["softcot", "compare"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 120 for line in lines)
    assert lines[1].split() == ["eval.num_thought_tokens", "6", "4", "6"]  # workspace, baseline, experiment
    assert [line.split()[1:] for line in lines[2:]] == [
        ["acc.cot", "12.0", "-", "12.0"],
        ["acc.softcot", "9.5", "-", "9.5"],
    ]
