"""Models: the registry of specs (data), materialization into HF directories, and loading.

`softcot.models.materialize` is both the CLI module and this package's `materialize` function:
importing the function here, once, binds the package attribute to the function for good.
`load_model` needs torch and transformers, so it is imported on first use: the Snakefile reads
specs without paying for those imports.
"""

from __future__ import annotations

import importlib
from typing import Any

from softcot.models.materialize import materialize
from softcot.models.registry import ModelSpec, get_spec, load_registry, model_names

_LAZY = {"load_model", "LoadedModel", "PlaceholderIds"}

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "PlaceholderIds",
    "get_spec",
    "load_model",
    "load_registry",
    "materialize",
    "model_names",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("softcot.models.load"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
