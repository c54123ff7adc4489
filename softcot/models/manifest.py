"""The record a materialized model directory carries: what it was built from, written last.

A directory is complete when its manifest is readable and every file the manifest lists is there
with its recorded size; the sha256 it also records is compared on demand (`hashes=True`, which
reads every byte). Its `spec` says which registry entry built it. `materialize` (skip or rebuild),
`load_model` (refuse a stale or incomplete build), `softcot verify` and the Snakefile all ask here.
This module needs neither torch nor transformers: the Snakefile imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from softcot.io import sha256_file
from softcot.models.registry import ModelSpec

MANIFEST_NAME = "softcot_model.json"


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of a model directory, or None if it is absent or unreadable (an unfinished build)."""
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def repair_hint(name: str, models_dir: str | os.PathLike) -> str:
    """The commands that rebuild model `name` in `models_dir`."""
    return (
        f"run `softcot materialize {name} --models-dir {models_dir}` "
        "(or `snakemake --cores 1 <target>`, which rebuilds it)"
    )


def file_problems(model_dir: Path, manifest: dict[str, Any], hashes: bool = False) -> list[str]:
    """What is wrong with the files `manifest` lists, one line each; empty when all are intact.

    Sizes are compared always (a stat per file); sha256 only with `hashes`. A manifest written
    before sizes were recorded has no `sizes`: its files are checked for presence only.
    """
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return [f"{model_dir / MANIFEST_NAME}: lists no files"]
    sizes = manifest.get("sizes")
    sizes = sizes if isinstance(sizes, dict) else {}
    problems = []
    for name, digest in sorted(files.items()):
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size, expected = path.stat().st_size, sizes.get(name)
        if expected is not None and size != expected:
            problems.append(f"{path}: {size} bytes, the manifest says {expected}")
        elif hashes and sha256_file(path) != digest:
            problems.append(f"{path}: sha256 differs from the manifest's")
    return problems


def folder_problems(model_dir: Path, hashes: bool = False) -> list[str]:
    """What keeps `model_dir` from being a complete materialized model; empty when nothing does."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        return [f"{model_dir / MANIFEST_NAME}: missing or unreadable (not materialized)"]
    return file_problems(model_dir, manifest, hashes)


def build_status(model_dir: Path, spec: ModelSpec) -> str | None:
    """None when `model_dir` is a complete build of exactly this spec, else why it is not."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        return "unfinished (no readable manifest)" if model_dir.exists() else "not materialized"
    if manifest.get("spec") != spec.to_dict():
        return "built from another spec"
    problems = file_problems(model_dir, manifest)
    return "incomplete: " + "; ".join(problems) if problems else None


def built_from(model_dir: Path, spec: ModelSpec) -> bool:
    """True when `model_dir` is a complete build of exactly this spec."""
    return build_status(model_dir, spec) is None


def model_folders(models_dir: Path) -> list[str]:
    """Names of the model directories in `models_dir` (dot entries such as the wheel cache excluded)."""
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def incomplete_folders(models_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Every model directory whose files fail the size check, with its problems; nothing is
    written (the Snakefile runs this while planning, and a dry run must change nothing).

    Only directories with a readable manifest are checked: one without is an unfinished build, which
    Snakemake reruns anyway (the manifest is its materialize rule's output). Cheap: one stat per
    listed file, no hashing.
    """
    models_dir = Path(models_dir)
    found = {}
    for name in model_folders(models_dir):
        manifest = read_manifest(models_dir / name)
        if manifest is not None and (problems := file_problems(models_dir / name, manifest)):
            found[name] = problems
    return found
