"""Prompt text -> one model's conversation format -> token ids.

A model whose spec has a chat template renders every conversation with it (protocol §4: no
system message, so the template's defaults apply; the pinned `date_string` is passed). A model
without one (the Gemma base model) uses the prompt set's `plain_format`. The thought slots are
written as the model's placeholder token strings and found again by id (placeholders.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from softcot.errors import DataError, ModelError
from softcot.prompts.sets import PromptSet, fill, question_text


@dataclass(frozen=True)
class TrainingSequence:
    """A templated (prompt, target) sequence; the loss covers ids[supervised_from:]."""

    ids: list[int]
    supervised_from: int


class PromptRenderer:
    """A prompt set rendered for one model: its tokenizer, placeholders, backbone and template.

    `model` is a softcot.models LoadedModel (anything with `tokenizer`, `spec`, `placeholder_ids`).
    `option_format` writes a multiple-choice question's options (None for datasets without options).
    """

    def __init__(self, prompt_set: PromptSet, model: Any, option_format: str | None):
        self.prompt_set = prompt_set
        self.tokenizer = model.tokenizer
        self.spec = model.spec
        self.placeholder_ids = model.placeholder_ids
        self.option_format = option_format
        if self.spec.chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(f"model {self.spec.name!r}: its spec says chat_template, its tokenizer has none")

    # --- text -------------------------------------------------------------------------------
    def base_slot(self, n: int) -> str | None:
        """`BOT + N x UNK + EOT` (protocol §3); None when there are no thought tokens."""
        marks = self.spec.placeholders
        return None if n == 0 else marks.bot + marks.unk * n + marks.eot

    def conversation(self, turns: list[tuple[str, str]], add_generation_prompt: bool = False) -> str:
        """The text of a conversation of (role, content) turns, in this model's format."""
        if self.spec.chat_template:
            kwargs = dict(self.spec.chat_template_kwargs or {})  # Qwen3: enable_thinking=False
            if self.spec.date_string is not None:
                kwargs["date_string"] = self.spec.date_string
            messages = [{"role": role, "content": content} for role, content in turns]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
            )
        plain = self.prompt_set.plain_format
        where = f"{self.prompt_set.path}: plain_format"
        text = "".join(fill(plain[role], {"content": content}, f"{where}.{role}") for role, content in turns)
        return text + (plain["generation_prompt"] if add_generation_prompt else "")

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered conversation: a chat template writes its own BOS, plain text gets
        the tokenizer's special tokens."""
        return self.tokenizer(text, add_special_tokens=not self.spec.chat_template)["input_ids"]

    # --- token ids --------------------------------------------------------------------------
    def base_ids(self, example: Mapping[str, Any], n: int, add_generation_prompt: bool = False) -> list[int]:
        """The base model's evaluation prompt: the user turn only (no generation prompt by default,
        protocol §4, but always for a model whose reference prompt has one: Qwen3); at n = 0 the
        thought hint is left out."""
        question = question_text(example, self.option_format)
        content = self.prompt_set.base_content(example["dataset"], question, self.base_slot(n))
        agp = add_generation_prompt or self.spec.test_generation_prompt
        return self.encode(self.conversation([("user", content)], agp))

    def hinted_ids(
        self, example: Mapping[str, Any], hint: str, add_generation_prompt: bool = False
    ) -> list[int]:
        """The base prompt with `hint` text where the thought slot would be (Zero-Shot Assist-CoT)."""
        question = question_text(example, self.option_format)
        content = self.prompt_set.base_content(example["dataset"], question, hint)
        agp = add_generation_prompt or self.spec.test_generation_prompt
        return self.encode(self.conversation([("user", content)], agp))

    def assistant_ids(self, example: Mapping[str, Any], n: int) -> list[int]:
        """The assistant's input: its prompt, then a reply that ends with N x UNK (protocol §4)."""
        question = question_text(example, self.option_format)
        user, reply = self.prompt_set.assistant_turns(
            example["dataset"], question, n, self.spec.placeholders.unk * n, self.spec.backbone
        )
        return self.encode(self.conversation([("user", user), ("assistant", reply)]))

    def training_sequence(
        self, example: Mapping[str, Any], n: int, drop_last_token: bool = False
    ) -> TrainingSequence:
        """template([user: base prompt with the slot, assistant: target]) and where its loss starts.

        Protocol §6: math families supervise from the token after the user turn's end-of-turn
        token (EOT placeholder + 2), StrategyQA from the end of the user-only conversation (P).
        Without a chat template the target text itself is supervised. `drop_last_token`
        reproduces the reference's truncation for the families where it happened (§14 row 5).
        """
        dataset = example["dataset"]
        family = self.prompt_set.family(dataset)
        question = question_text(example, self.option_format)
        backbone = self.spec.backbone  # Qwen3 trains on other prompts than it is tested on (§5.1)
        user = self.prompt_set.train_content(dataset, question, self.base_slot(n), backbone)
        target = self.prompt_set.target(dataset, example, question, backbone)
        ids = self.encode(self.conversation([("user", user), ("assistant", target)]))
        if self.spec.chat_template:
            prefix_text = self.conversation([("user", user)])
        else:
            header = self.prompt_set.plain_format["assistant"].removesuffix("{{content}}")
            prefix_text = self.conversation([("user", user)]) + header
        prefix = self.encode(prefix_text)
        if ids[: len(prefix)] != prefix:
            raise DataError(
                f"example {example['id']!r}: the tokens of the prompt are not a prefix of the tokens of "
                f"prompt + target for model {self.spec.name!r}; the loss boundary would be ambiguous"
            )
        start = len(prefix)
        if self.spec.chat_template and family.supervise_from == "after_user_end_of_turn":
            # The slot's EOT: right after the one run of N UNK (a template may write EOT too: Qwen3).
            eot = ids.index(self.placeholder_ids.unk) + n
            if ids[eot] != self.placeholder_ids.eot:
                raise DataError(f"example {example['id']!r}: no EOT right after the thought slot")
            if eot + 2 > start:
                raise DataError(
                    f"example {example['id']!r}: the thought slot is not the end of the user turn "
                    f"(EOT at {eot}, user turn ends at {start}); family {family.name!r} needs it there"
                )
            start = eot + 2
        if drop_last_token and family.for_base(
            backbone, "reference_drops_last_token", family.reference_drops_last_token
        ):
            ids = ids[:-1]
        return TrainingSequence(ids=ids, supervised_from=start)
