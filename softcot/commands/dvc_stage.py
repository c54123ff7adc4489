"""`softcot dvc-stage TABLE`: the command of dvc.yaml's stage `table@TABLE`.

It checks params.yaml as the Snakefile does, then hands over to snakemake, which decides what to
rebuild. `dvc exp run -S KEY=VALUE` writes its values into params.yaml before any stage runs; when
they fail the check, this command puts those values back as they were when params.yaml last passed
the check (a copy kept in .dvc/tmp), so a failed experiment leaves the workspace unchanged (the
reports are `persist` outputs, which DVC does not delete first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from softcot.errors import SoftCoTError
from softcot.io import write_text_atomic
from softcot.plan import Plan

PARAMS = "params.yaml"
# params.yaml as it last passed the check here: what a failed `-S` is undone to (DVC's scratch folder).
CHECKED = Path(".dvc") / "tmp" / "softcot" / "checked-params.yaml"
SNAKEMAKE_OPTIONS = ("--cores", "all", "--rerun-triggers", "params", "input", "code", "software-env")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="the table to build: reports/TABLE.md and its csv, png and json")


def set_param_overrides() -> list[str] | None:
    """The `-S` values of the `dvc exp run` this stage runs under, from its command line; None when
    this is no workspace experiment (a plain `dvc repro`, or a --temp or queued run, which works in a
    copy of the repository and leaves the workspace alone)."""
    import psutil
    from dvc.cli import parse_args

    root = os.environ.get("DVC_ROOT")
    if "DVC_EXP_NAME" not in os.environ or not root or Path(root).resolve() != Path.cwd().resolve():
        return None
    for process in psutil.Process().parents():
        try:
            argv = process.cmdline()
        except psutil.Error:
            continue
        for i in range(len(argv) - 1):
            if argv[i : i + 2] == ["exp", "run"]:
                return parse_args(argv[i:]).set_param or []
    return None


def _previous_params() -> object:
    """params.yaml as it last passed this check in this workspace (a previous experiment's values
    stay in the workspace after it), else as the experiment's baseline commit has it; read so that
    it writes back as it was."""
    from dvc.utils.serialize import parse_yaml_for_update

    if CHECKED.is_file():
        text = CHECKED.read_text(encoding="utf-8")
    else:
        text = subprocess.run(
            ["git", "show", f"{os.environ['DVC_EXP_BASELINE_REV']}:{PARAMS}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return parse_yaml_for_update(text, PARAMS)


def _lookup(data: object, key: str) -> tuple[dict, str] | None:
    """The mapping that holds a dotted key, and the key's last part; None if the path is not there."""
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return (data, last) if isinstance(data, dict) and last in data else None


def undo_set_params(values: list[str]) -> str:
    """Put back the params.yaml values that `-S` changed, as they were when params.yaml last passed
    this check (or at the baseline commit); return what was done, for the console. Only plain
    `KEY=VALUE` changes of existing keys are undone, and other changes to the file are kept; a value
    you had edited by hand since the last check, and then set with `-S`, goes back to that check's."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import to_hydra_overrides
    from dvc.utils.serialize import modify_yaml

    overrides = to_hydra_overrides(to_path_overrides(values).get(PARAMS, []))
    if not overrides:
        return f"{PARAMS} was not changed by this experiment"
    keys = [override.key_or_group for override in overrides]
    previous = _previous_params()
    held = [_lookup(previous, key) for key in keys]
    if any(o.type.name != "CHANGE" for o in overrides) or any(place is None for place in held):
        return f"{PARAMS} still holds this experiment's values ({' '.join(values)}): see `git diff {PARAMS}`"
    with modify_yaml(PARAMS) as data:
        for key, (before, last) in zip(keys, held, strict=True):
            mapping, _ = _lookup(data, key)  # -S changed the key, so it is there
            mapping[last] = before[last]
    undone = " ".join(values)
    return f"{PARAMS} is back as it was before this experiment (undone: {undone}); reports/ is untouched"


def run(args: argparse.Namespace) -> int:
    try:
        Plan.load(PARAMS).table(args.table)
    except SoftCoTError:
        values = set_param_overrides()
        if values is not None:
            print(f"softcot dvc-stage: {undo_set_params(values)}", file=sys.stderr)
        raise
    if Path(".dvc").is_dir():
        CHECKED.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(CHECKED, Path(PARAMS).read_text(encoding="utf-8"))
    command = ["snakemake", f"reports/{args.table}.md", *SNAKEMAKE_OPTIONS]
    return subprocess.run(command, check=False).returncode
