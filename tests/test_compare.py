"""softcot compare: DVC's `exp show --json` as one column per experiment (tests/test_params_file.py
runs it on a real experiment)."""

from __future__ import annotations

from softcot.commands.compare import columns, render


def commit(rev: str, name: str | None, params: dict, metrics: dict | None, experiments=None) -> dict:
    data = {"params": {"params.yaml": {"data": params}}, "metrics": {}}
    if metrics is not None:
        data["metrics"]["reports/main_table.json"] = {"data": {"acc": metrics}}
    return {"rev": rev, "name": name, "data": data, "experiments": experiments}


def test_only_the_values_that_differ_and_every_row_are_shown():
    base = {"preset": "tiny", "eval": {"num_thought_tokens": 4, "seeds": [41, 42]}, "train": {"limit": None}}
    changed = base | {"eval": {"num_thought_tokens": 6, "seeds": [41, 42]}}
    experiment = commit("b" * 40, "wispy-fish", changed, {"cot": 12.0, "softcot": 9.5})
    shown = [
        commit("workspace", None, changed, {"cot": 12.0, "softcot": 9.5}),
        commit("a" * 40, "main", base, None, experiments=[{"revs": [experiment], "name": "wispy-fish"}]),
    ]
    lines = render(columns(shown, "main_table"), "main_table").splitlines()
    assert lines[0].split() == ["workspace", "main", "wispy-fish"]
    assert lines[1].split() == ["eval.num_thought_tokens", "6", "4", "6"]
    # main's reports/main_table.json is absent: its cells are '-'
    assert [line.split() for line in lines[2:]] == [
        ["main_table:", "acc.cot", "12.0", "-", "12.0"],
        ["main_table:", "acc.softcot", "9.5", "-", "9.5"],
    ]


def test_a_lone_baseline_says_that_no_parameter_differs():
    lines = render(
        columns([commit("a" * 40, None, {"preset": "tiny"}, {"cot": 1.0})], "main_table"), "main_table"
    )
    assert lines.splitlines()[0].split() == ["aaaaaaa"]
    assert "(no parameter differs)" in lines
