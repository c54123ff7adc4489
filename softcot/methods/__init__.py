"""Method families, one module each; what each kind needs and reads is data (methods.yaml, read by
softcot.methods.catalog). Adding a method is one new module, its catalog entry and its params.yaml
entries. Importing this package loads no implementation: `method_class` does, when a job computes.
"""

from __future__ import annotations

import importlib
from typing import Any

from softcot.methods.catalog import method_spec


def method_class(kind: str) -> type[Any]:
    """The implementation of a method kind (a softcot.methods.base.Method subclass)."""
    module, name = method_spec(kind).implementation.split(":")
    cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    if cls.kind != kind:
        raise TypeError(f"{module}:{name} implements {cls.kind!r}, but the catalog lists it as {kind!r}")
    return cls
