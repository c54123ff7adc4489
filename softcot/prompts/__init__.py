"""Prompts: the protocol's strings as data (one YAML file per prompt set), rendered for a model,
and the thought slots located again by token id.

Locating slots needs torch, so those names are imported on first use: the planner reads prompt
sets without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from softcot.prompts.render import PromptRenderer, TrainingSequence
from softcot.prompts.sets import PromptError, PromptSet, load_prompt_set, question_text

_PLACEHOLDERS = {"PlaceholderError", "locate_assistant_slots", "locate_base_slots"}

__all__ = [
    "PlaceholderError",
    "PromptError",
    "PromptRenderer",
    "PromptSet",
    "TrainingSequence",
    "load_prompt_set",
    "locate_assistant_slots",
    "locate_base_slots",
    "question_text",
]


def __getattr__(name: str) -> Any:
    if name in _PLACEHOLDERS:
        return getattr(importlib.import_module("softcot.prompts.placeholders"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
