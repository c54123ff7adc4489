"""`softcot` command line: one subcommand per pipeline step.

Each subcommand is a module with `add_arguments(parser)` and `run(args)`: in softcot/commands/
where its step is resolved from params.yaml, otherwise beside the step it runs. Modules are
imported only when their command runs, so `softcot --help` answers without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from softcot.errors import SoftCoTError

COMMANDS = {
    "prepare": ("softcot.commands.prepare", "prepare one dataset split into the common schema"),
    "materialize": ("softcot.models.materialize", "turn a model spec into a local Hugging Face directory"),
    "verify": ("softcot.models.verify", "check materialized model directories against their manifests"),
    "train": ("softcot.commands.train", "train the soft-thought projection of a model pair on a dataset"),
    "evaluate": (
        "softcot.commands.evaluate",
        "evaluate a method of a model pair on a dataset for every seed",
    ),
    "merge": ("softcot.commands.merge", "merge a sharded evaluation's shards into per-seed prediction files"),
    "import-projector": ("softcot.import_projector", "convert the authors' projection.bin into a checkpoint"),
    "dvc-stage": (
        "softcot.commands.dvc_stage",
        "the DVC stage of one table: check params.yaml, then run its snakemake target",
    ),
    "compare": (
        "softcot.commands.compare",
        "DVC's experiments side by side: the parameters that differ and a table's accuracies",
    ),
    "table": ("softcot.report", "build a significance-tested table from prediction files"),
    "probe": (
        "softcot.probe.command",
        "the thought probe: held-out likelihood of the gold target under six conditions",
    ),
}


def build_parser(argv_command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softcot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == argv_command:
            importlib.import_module(module_name).add_arguments(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.run(args) or 0
    except SoftCoTError as exc:
        print(f"softcot {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
