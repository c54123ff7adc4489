"""The record a materialized model directory carries: what it was built from, written last.

Its presence means the directory is complete; its `spec` says which registry entry built it, so
both `materialize` (skip or rebuild) and `load_model` (refuse a stale build) can tell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softcot.models.registry import ModelSpec

MANIFEST_NAME = "softcot_model.json"


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of a model directory, or None if it is absent or unreadable (an unfinished build)."""
    try:
        return json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def built_from(model_dir: Path, spec: ModelSpec) -> bool:
    """True when `model_dir` is a complete build of exactly this spec."""
    manifest = read_manifest(model_dir)
    return manifest is not None and manifest.get("spec") == spec.to_dict()
