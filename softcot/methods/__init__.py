"""Method families, one module each. A module lists its classes in `METHODS`; this package
collects them by `kind`, so adding a method is one new module plus its params.yaml entries."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from softcot.errors import ConfigError
from softcot.methods.base import GENERATION_KEYS, Artefact, Method

__all__ = ["GENERATION_KEYS", "Artefact", "Method", "artefacts", "method_class", "method_kinds"]


@cache
def _registry() -> dict[str, type[Method]]:
    registry: dict[str, type[Method]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in getattr(module, "METHODS", ()):
            if cls.kind in registry:
                raise ConfigError(f"method kind {cls.kind!r} is defined twice ({module.__name__})")
            registry[cls.kind] = cls
    return registry


def method_kinds() -> tuple[str, ...]:
    return tuple(sorted(_registry()))


def method_class(kind: str) -> type[Method]:
    registry = _registry()
    if kind not in registry:
        raise ConfigError(f"unknown method kind {kind!r} (known: {', '.join(sorted(registry))})")
    return registry[kind]


def artefacts() -> dict[str, tuple[Artefact, type[Method]]]:
    """Every trained artefact by name, with the method family that trains it."""
    found = {}
    for cls in _registry().values():
        if cls.artefact is not None:
            found.setdefault(cls.artefact.name, (cls.artefact, cls))
    return found
