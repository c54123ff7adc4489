"""Prompts: the protocol's strings as data (one YAML file per prompt set), rendered for a model,
and the thought slots located again by token id."""

from softcot.prompts.placeholders import PlaceholderError, locate_assistant_slots, locate_base_slots
from softcot.prompts.render import PromptRenderer, TrainingSequence
from softcot.prompts.sets import PromptError, PromptSet, load_prompt_set, question_text

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
