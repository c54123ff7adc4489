"""`softcot verify`: check materialized model directories against their manifests.

Sizes are compared always; sha256 with --hashes (reads every byte: minutes for an 8B model).
Whether a directory was built from the registry's current spec is `softcot materialize`'s concern.
--invalidate removes the manifest of a damaged directory, so that `softcot materialize` and
Snakemake (whose materialize rule outputs the manifest) rebuild it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softcot.errors import ModelError
from softcot.models.manifest import MANIFEST_NAME, folder_problems, model_folders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="models to check (default: every directory in --models-dir)",
    )
    parser.add_argument(
        "--models-dir",
        default="results/models",
        type=Path,
        help="where model directories are (default: %(default)s)",
    )
    parser.add_argument("--hashes", action="store_true", help="also compare every file's sha256")
    parser.add_argument(
        "--invalidate",
        action="store_true",
        help="remove the manifest of a damaged directory, so that it is rebuilt",
    )


def run(args: argparse.Namespace) -> int:
    names = args.models or model_folders(args.models_dir)
    if not names:
        raise ModelError(f"{args.models_dir}: no model directories to verify")
    failed: dict[str, list[str]] = {}
    for name in names:
        problems = folder_problems(args.models_dir / name, args.hashes)
        if not problems:
            print(f"softcot verify: {name}: ok ({'sizes and sha256' if args.hashes else 'sizes'})")
            continue
        failed[name] = problems
        manifest = args.models_dir / name / MANIFEST_NAME
        if args.invalidate and manifest.exists():
            manifest.unlink()
            problems.append(f"{manifest}: removed, so that the next materialize rebuilds {name}")
    if failed:
        lines = [f"  {problem}" for problems in failed.values() for problem in problems]
        fixes = " ".join(failed)
        raise ModelError(
            f"{len(failed)} of {len(names)} model(s) damaged or missing:\n" + "\n".join(lines) + "\n"
            f"rebuild with `softcot materialize {fixes} --models-dir {args.models_dir}`"
        )
    return 0
