"""Prompt sets: the protocol's strings as data (softcot/prompts/{name}.yaml), filled in for an example.

This module knows text only. Turning the text into a model's token ids (chat template or plain
format, placeholder tokens, the loss boundary) is `render.py`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softcot.data.datasets import catalog, dataset_spec
from softcot.errors import ConfigError, DataError
from softcot.io import sha256_file

PROMPTS_DIR = Path(__file__).resolve().parent
FIELD = re.compile(r"\{\{(\w+)\}\}")
SUPERVISION_RULES = ("after_user_end_of_turn", "after_user_conversation")

# The fields each kind of template may use; a template naming another field is a typo.
TEMPLATE_FIELDS = {
    "base": {"question", "thoughts_hint"},
    "thoughts_hint": {"thoughts"},
    "assistant": {"N", "question", "thoughts"},
    "target": {"question", "i", "line", "answer"},
    "plain_format": {"content"},
    "train_base": {"question", "thoughts_hint", "thoughts"},
}
# What a family may change for the base model of one backbone, in training only (`by_base_backbone`:
# Qwen3 is trained on other prompts and targets than it is tested on, protocol §5.1, §5.2, §5.6).
BASE_BACKBONE_KEYS = {
    "train_base",
    "target_prefix",
    "target_line_substitutions",
    "reference_drops_last_token",
}


class PromptError(ConfigError):
    """A prompt set file is malformed, or asked for something it does not define."""


def fill(template: str, fields: Mapping[str, object], where: str) -> str:
    """Replace every {{name}} in one pass, so text inserted by a field is never read as a field."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in fields:
            raise PromptError(f"{where}: unknown field {{{{{name}}}}} (known: {', '.join(sorted(fields))})")
        return str(fields[name])

    return FIELD.sub(replace, template)


def question_text(example: Mapping[str, Any], option_format: str | None) -> str:
    """The question as the paper's data wrote it: options, if any, appended after a space.

    `option_format` (the dataset's `data.<key>.option_format`) renders one option from `{letter}`
    and `{text}`; the options are joined with single spaces, in letter order.
    """
    options = example.get("options")
    if not options:
        return example["question"]
    if option_format is None or "{letter}" not in option_format or "{text}" not in option_format:
        raise ConfigError(
            f"{example.get('dataset', 'a dataset with options')}: option_format {option_format!r} "
            "must contain {letter} and {text}"
        )
    rendered = [
        option_format.replace("{letter}", letter).replace("{text}", text)
        for letter, text in sorted(options.items())
    ]
    return example["question"] + " " + " ".join(rendered)


@dataclass(frozen=True)
class Family:
    """The prompts of one task family (math, aqua, date, strategyqa) in a prompt set."""

    name: str
    base: str
    thoughts_hint: str
    assistant_user: str
    assistant_reply: str
    assistant_variables: dict[str, str]
    assistant_variables_by_backbone: dict[str, dict[str, str]]
    target: dict[str, Any] | None
    supervise_from: str
    reference_drops_last_token: bool
    by_base_backbone: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_base(self, backbone: str | None, key: str, default: Any) -> Any:
        """A training-time value for a base model of `backbone` (its `by_base_backbone` entry)."""
        return self.by_base_backbone.get(backbone or "", {}).get(key, default)


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt set. `sha256` identifies the file, so caches keyed on it notice edits."""

    name: str
    path: Path
    sha256: str
    plain_format: dict[str, str]
    families: dict[str, Family]

    def family(self, dataset: str) -> Family:
        """The family the dataset catalog assigns to `dataset`."""
        return self.families[dataset_spec(dataset).prompt_family]

    def base_content(self, dataset: str, question: str, slot: str | None) -> str:
        """The base model's user turn; `slot` is BOT + N x UNK + EOT, or None for no thoughts (N = 0)."""
        family = self.family(dataset)
        where = f"{self.path}: families.{family.name}"
        hint = (
            "" if slot is None else fill(family.thoughts_hint, {"thoughts": slot}, f"{where}.thoughts_hint")
        )
        return fill(family.base, {"question": question, "thoughts_hint": hint}, f"{where}.base")

    def assistant_turns(
        self, dataset: str, question: str, n: int, slot: str, backbone: str
    ) -> tuple[str, str]:
        """The assistant's (user turn, reply); the reply ends with `slot` (N x UNK)."""
        family = self.family(dataset)
        fields = {
            **family.assistant_variables,
            **family.assistant_variables_by_backbone.get(backbone, {}),
            "N": n,
            "question": question,
            "thoughts": slot,
        }
        where = f"{self.path}: families.{family.name}.assistant"
        return fill(family.assistant_user, fields, f"{where}.user"), fill(
            family.assistant_reply, fields, f"{where}.reply"
        )

    def train_content(self, dataset: str, question: str, slot: str, backbone: str | None) -> str:
        """The base model's user turn in a training sequence: the test prompt (`base_content`),
        unless the family has a training prompt for the base's backbone (Qwen3, protocol §5.1)."""
        family = self.family(dataset)
        template = family.for_base(backbone, "train_base", None)
        if template is None:
            return self.base_content(dataset, question, slot)
        where = f"{self.path}: families.{family.name}.by_base_backbone.{backbone}"
        hint = fill(family.thoughts_hint, {"thoughts": slot}, f"{where}.thoughts_hint")
        return fill(
            template, {"question": question, "thoughts_hint": hint, "thoughts": slot}, f"{where}.train_base"
        )

    def target(
        self, dataset: str, example: Mapping[str, Any], question: str, backbone: str | None = None
    ) -> str:
        """The training target (protocol §5.6): the rationale as numbered steps, then the answer.
        A base of `backbone` may get a prefix and line substitutions (Qwen3's `<think>\n\n</think>`
        and its partial line cleaning)."""
        family = self.family(dataset)
        where = f"{self.path}: families.{family.name}.target"
        if family.target is None:
            raise PromptError(
                f"{where}: family {family.name!r} has no training target "
                f"(dataset {dataset!r} is evaluation-only)"
            )
        spec = family.target
        answer = str(example["answer"])
        words = spec.get("answer_words")
        if words is not None:
            if answer not in words:
                raise DataError(
                    f"example {example.get('id')!r}: answer {answer!r} is not one of {sorted(words)} "
                    f"({where}.answer_words)"
                )
            answer = words[answer]
        lines = list(example["rationale"])
        if "closing_step" in spec:
            lines.append(fill(spec["closing_step"], {"answer": answer}, f"{where}.closing_step"))
        for pattern, replacement in family.for_base(backbone, "target_line_substitutions", []):
            lines = [re.sub(pattern, replacement, line) for line in lines]
        fields = {"question": question, "answer": answer}
        steps = [
            fill(spec["step"], {**fields, "i": i, "line": line}, f"{where}.step")
            for i, line in enumerate(lines, start=1)
        ]
        opening = family.for_base(backbone, "target_prefix", "") + fill(
            spec["opening"], fields, f"{where}.opening"
        )
        return opening + "".join(steps) + fill(spec["final"], fields, f"{where}.final")


def _check_fields(template: str, allowed: set[str], where: str) -> None:
    unknown = set(FIELD.findall(template)) - allowed
    if unknown:
        raise PromptError(f"{where}: unknown field(s) {sorted(unknown)} (allowed: {sorted(allowed)})")


def _require(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise PromptError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise PromptError(
            f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}"
        )
    return value


def _family(name: str, raw: Any, where: str) -> Family:
    base = _require(raw, "base", str, where)
    hint = _require(raw, "thoughts_hint", str, where)
    assistant = _require(raw, "assistant", dict, where)
    user = _require(assistant, "user", str, f"{where}.assistant")
    reply = _require(assistant, "reply", str, f"{where}.assistant")
    variables = assistant.get("variables", {})
    default = variables.get("default", {})
    by_backbone = variables.get("by_backbone", {})
    assistant_fields = TEMPLATE_FIELDS["assistant"] | set(default)
    for backbone, overrides in by_backbone.items():
        if set(overrides) - set(default):
            raise PromptError(
                f"{where}.assistant.variables.by_backbone.{backbone}: variables "
                f"{sorted(set(overrides) - set(default))} have no default"
            )
    _check_fields(base, TEMPLATE_FIELDS["base"], f"{where}.base")
    _check_fields(hint, TEMPLATE_FIELDS["thoughts_hint"], f"{where}.thoughts_hint")
    if "{{thoughts}}" not in hint:
        raise PromptError(f"{where}.thoughts_hint: must contain {{{{thoughts}}}}")
    _check_fields(user, assistant_fields - {"thoughts"}, f"{where}.assistant.user")
    _check_fields(reply, assistant_fields, f"{where}.assistant.reply")
    if not reply.endswith("{{thoughts}}"):
        raise PromptError(f"{where}.assistant.reply: must end with {{{{thoughts}}}} (protocol §4)")
    target = raw.get("target")
    if target is not None:
        for key in ("opening", "step", "final"):
            _check_fields(
                _require(target, key, str, f"{where}.target"),
                TEMPLATE_FIELDS["target"],
                f"{where}.target.{key}",
            )
    supervise_from = raw.get("supervise_from", SUPERVISION_RULES[0])
    if supervise_from not in SUPERVISION_RULES:
        raise PromptError(
            f"{where}.supervise_from: {supervise_from!r} is not one of {list(SUPERVISION_RULES)}"
        )
    return Family(
        name=name,
        base=base,
        thoughts_hint=hint,
        assistant_user=user,
        assistant_reply=reply,
        assistant_variables={k: str(v) for k, v in default.items()},
        assistant_variables_by_backbone={
            b: {k: str(v) for k, v in o.items()} for b, o in by_backbone.items()
        },
        target=target,
        supervise_from=supervise_from,
        reference_drops_last_token=bool(raw.get("reference_drops_last_token", False)),
        by_base_backbone=_by_base_backbone(raw.get("by_base_backbone", {}), f"{where}.by_base_backbone"),
    )


def _by_base_backbone(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    """A family's training-time variants by base backbone, checked key by key."""
    if not isinstance(raw, dict):
        raise PromptError(f"{where}: expected a mapping of backbone -> variant")
    for backbone, variant in raw.items():
        here = f"{where}.{backbone}"
        if not isinstance(variant, dict) or set(variant) - BASE_BACKBONE_KEYS:
            raise PromptError(f"{here}: allowed keys are {sorted(BASE_BACKBONE_KEYS)}")
        if "train_base" in variant:
            _check_fields(
                _require(variant, "train_base", str, here),
                TEMPLATE_FIELDS["train_base"],
                f"{here}.train_base",
            )
        for i, pair in enumerate(variant.get("target_line_substitutions", [])):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise PromptError(f"{here}.target_line_substitutions[{i}]: expected [pattern, replacement]")
            try:
                re.compile(pair[0])
            except re.error as exc:
                raise PromptError(f"{here}.target_line_substitutions[{i}]: bad pattern ({exc})") from exc
    return {backbone: dict(variant) for backbone, variant in raw.items()}


def prompt_set_names(directory: str | Path = PROMPTS_DIR) -> tuple[str, ...]:
    """The prompt sets that exist (softcot/prompts/*.yaml)."""
    return tuple(sorted(p.stem for p in Path(directory).glob("*.yaml")))


def load_prompt_set(name: str, directory: str | Path = PROMPTS_DIR) -> PromptSet:
    """Load and validate softcot/prompts/{name}.yaml (params `train.prompt_set` / `eval.prompt_set`)."""
    path = Path(directory) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise PromptError(f"{path}: no prompt set {name!r} (available: {', '.join(known)})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PromptError(f"{path}: not valid YAML ({exc})") from exc
    where = str(path)
    families_raw = _require(raw, "families", dict, where)
    plain = _require(raw, "plain_format", dict, where)
    for key in ("user", "assistant", "generation_prompt"):
        _check_fields(
            _require(plain, key, str, f"{where}: plain_format"),
            TEMPLATE_FIELDS["plain_format"],
            f"{where}: plain_format.{key}",
        )
    if not plain["assistant"].endswith("{{content}}"):
        raise PromptError(f"{where}: plain_format.assistant must end with {{{{content}}}}")
    families = {name: _family(name, body, f"{where}: families.{name}") for name, body in families_raw.items()}
    for spec in catalog().values():
        if spec.prompt_family not in families:
            raise PromptError(
                f"{where}: families: no family {spec.prompt_family!r}, which dataset {spec.name!r} uses "
                "(prompt_family in softcot/data/datasets.yaml)"
            )
    return PromptSet(
        name=name,
        path=path,
        sha256=sha256_file(path),
        plain_format=dict(plain),
        families=families,
    )
