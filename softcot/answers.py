"""Answer extraction and comparison: from a model's raw text to a prediction scored against the gold.

Two extractors live side by side because the paper's numbers were produced by a buggy one:
- `reference` reproduces the paper's scripts exactly, defects included (docs/protocol.md §9, §14 rows 13-15),
  so our accuracies stay comparable with the published ones;
- `robust` (the default) reads the explicit final answer first (`\\boxed{}`, "the answer is ...") and
  only then falls back to stray tokens; it accepts signs, decimals, separators and simple fractions,
  reads option letters only as option letters and yes/no only as answers.

Predictions come out normalized like the prepared gold `answer` (docs/design.md §4): a canonical decimal
string ("18", "-2", "7.5"), a letter "A".."F", or "yes"/"no"; None when nothing is found.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from softcot.data.datasets import dataset_names, dataset_spec
from softcot.errors import ConfigError, DataError
from softcot.numbers import normalize_number, number_value


@dataclass(frozen=True)
class TaskSpec:
    """How a dataset's answers look (from the dataset catalog): its answer type and, for
    multiple choice, the letters it offers."""

    answer: str  # number | letter | yes_no
    letters: str = ""


MODES = ("robust", "reference")


def _task_spec(task: str) -> TaskSpec:
    if task not in dataset_names():
        raise ConfigError(f"unknown task {task!r}: answers are defined for {', '.join(dataset_names())}")
    spec = dataset_spec(task)
    return TaskSpec(spec.answer, spec.letters)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"eval.extractor: unknown mode {mode!r} (expected one of {', '.join(MODES)})")


def _canonical(value: Decimal) -> str:
    # Fixed-point text first: normalize_number takes what a person writes, not "1E+2".
    return normalize_number(format(value, "f"))


# --------------------------------------------------------------------------------------------------
# Reference extractor: the paper's regexes (quoted in docs/protocol.md §9), defects kept on purpose.

_REFERENCE_NUMBER = re.compile(r"\s*([\d,]+(?:\.\d+)?)\s*")
_REFERENCE_LETTER = re.compile(r"\b[a-f]\b")
_REFERENCE_YES = re.compile(r"\byes\b")
_REFERENCE_NO = re.compile(r"\bno\b")


def _reference_value(text: str) -> Decimal:
    """The reference's number semantics: float if the text has a '.', else int; commas dropped first.

    Decimal holds both exactly (an int of any length, a float's exact binary value), so `==` between
    two of these gives the same verdict as the reference's `==` between Python numbers.
    """
    text = text.replace(",", "")
    return Decimal(float(text)) if "." in text else Decimal(text)


def _reference_math(text: str, spec: TaskSpec) -> str | None:
    for char in ",%$":
        text = text.replace(char, "")
    matches = _REFERENCE_NUMBER.findall(text)
    if not matches:
        return None
    last = matches[-1]
    if "." not in last:
        return _canonical(Decimal(last))
    rounded = round(float(last), 2)
    if math.isinf(rounded):
        return None  # hundreds of digits from a degenerate loop: the reference's `inf` matches no gold
    return _canonical(Decimal(repr(rounded)))


def _reference_choice(text: str, spec: TaskSpec) -> str | None:
    # The reference searches the reversed text, so the first hit is the last standalone letter a-f;
    # no letter range applies (F is accepted for AQuA).
    match = _REFERENCE_LETTER.search(text.lower()[::-1])
    return match.group().upper() if match else None


def _reference_yesno(text: str, spec: TaskSpec) -> str | None:
    lowered = text.lower()
    last_yes = max((m.start() for m in _REFERENCE_YES.finditer(lowered)), default=-1)
    last_no = max((m.start() for m in _REFERENCE_NO.finditer(lowered)), default=-1)
    if last_yes < 0 and last_no < 0:
        return None
    return "yes" if last_yes > last_no else "no"


# --------------------------------------------------------------------------------------------------
# Robust extractor: explicit final answers first, then stray tokens.

# LaTeX a model wraps answers in, rewritten to plain text before anything is read.
_LATEX_REWRITES = [
    (re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}"), r"\1/\2"),
    (re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\[$%]"), lambda m: m.group()[1]),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[,!;: ]|\\[()\[\]]"), ""),
]

# "the answer is", "final answer is:", "Final Answer:", "the answer would be" -- but not "Answer Choices:".
_ANSWER_PHRASE = re.compile(r"\banswer\s*(?:(?:is|would\s+be|will\s+be)\b\s*:?|:)", re.IGNORECASE)

_NUMBER = re.compile(
    r"""
    (?<![\w.:/])                 # not the tail of a word, a decimal, a time or a fraction
    (?:(?P<sign>[-−])\$?)?       # a minus glued to the number: "-3", "-$5" (never "16 - 3")
    (?P<numerator>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:/(?P<denominator>\d+(?:\.\d+)?))?    # a simple fraction: 3/4
    (?![\d/]|[.,:]\d)            # not followed by more digits: a time (3:30), a date (1/2/2020), "1.2.3"
    """,
    re.VERBOSE,
)

# Option letters written as options: "(C)", "C)", "option C", "choice C".
_OPTION_TOKEN = re.compile(r"\(([A-F])\)|(?<![\w(])([A-F])\)|\b(?i:option|choice)\s+\(?([A-Fa-f])\b")
_BARE_LETTER = re.compile(r"(?<![\w.'’])([A-F])(?![\w'’])(?!\.\w)")  # "C", "C." -- not "E.g." or "I'd"
_LEADING_LETTER = re.compile(r"[\s:*$`'\"(]*" + _BARE_LETTER.pattern)
_ARTICLE_FOLLOWS = re.compile(r"\s+[a-z]")

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
# Outside an explicit answer, "yes" is always an answer word but "no" only when it stands alone,
# followed by punctuation or the end ("No." / "**No**" count; "there is no evidence" does not).
_YES_NO_ANSWER = re.compile(r"\b(yes)\b|\b(no)\b(?=\s*(?:[.,!;:)*`'\"]|$))", re.IGNORECASE)
# The prompt's own "`Yes` or `No`" echoed back names both words and answers nothing.
_YES_OR_NO = re.compile(r"`?\byes\b`?\s*(?:or|/)\s*`?\bno\b`?", re.IGNORECASE)


def _clean_latex(text: str) -> str:
    for pattern, replacement in _LATEX_REWRITES:
        text = pattern.sub(replacement, text)
    return text


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, braces balanced, in order of appearance."""
    contents = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                contents.append(text[start:index])
                break
    return contents


def _answer_spans(text: str) -> list[str]:
    """What follows each "the answer is" / "final answer:" up to the end of its line, in order."""
    return [text[m.end() :].split("\n", 1)[0] for m in _ANSWER_PHRASE.finditer(text)]


def _candidates(text: str) -> Iterator[str]:
    """Explicit final answers, most trusted first: boxed contents last to first, then answer phrases."""
    yield from reversed(_boxed_contents(text))
    yield from reversed(_answer_spans(text))


def _first_found(spans: Iterator[str], read: Callable[[str], str | None]) -> str | None:
    for span in spans:
        found = read(span)
        if found is not None:
            return found
    return None


def _number_matches(text: str) -> Iterator[Decimal]:
    for match in _NUMBER.finditer(text):
        value = Decimal(match["numerator"].replace(",", ""))
        if match["denominator"] is not None:
            denominator = Decimal(match["denominator"])
            if denominator == 0:
                continue
            value /= denominator
        yield -value if match["sign"] else value


def _number_in_answer(span: str) -> str | None:
    """The first number of the span's result: after the last '=' ("x = 5", "3 + 4 = 7")."""
    value = next(_number_matches(span.rsplit("=", 1)[-1]), None)
    return None if value is None else _canonical(value)


def _robust_math(text: str, spec: TaskSpec) -> str | None:
    text = _clean_latex(text)
    found = _first_found(_candidates(text), _number_in_answer)
    if found is not None:
        return found
    values = list(_number_matches(text))
    return _canonical(values[-1]) if values else None


def _option_letter(match: re.Match) -> str:
    return next(group for group in match.groups() if group).upper()


def _lone_letter(span: str, letters: str) -> str | None:
    """The letter of a span that holds nothing else ("b", "(C).", "**D**"), if it is in range."""
    match = re.fullmatch(r"[\W_]*([a-f])[\W_]*", span, re.IGNORECASE)
    return match[1].upper() if match and match[1].upper() in letters else None


def _letter_in_answer(span: str, letters: str) -> str | None:
    """The first option letter of an answer span, bare letters included.

    A capital "A" before a lowercase word is the article, except as the span's first word:
    right after "the answer is", "A because ..." names option A.
    """
    lone = _lone_letter(span, letters)
    if lone is not None:
        return lone
    leading = _LEADING_LETTER.match(span)  # "the answer is A because ...": first in the span is the option
    if leading and leading[1] in letters:
        return leading[1]
    hits = [(match.start(), _option_letter(match)) for match in _OPTION_TOKEN.finditer(span)]
    for match in _BARE_LETTER.finditer(span):
        if not (match[1] == "A" and _ARTICLE_FOLLOWS.match(span, match.end())):
            hits.append((match.start(), match[1]))
    for _, letter in sorted(hits):
        if letter in letters:
            return letter
    return None


def _robust_choice(text: str, spec: TaskSpec) -> str | None:
    text = _clean_latex(text)
    found = _first_found(_candidates(text), lambda span: _letter_in_answer(span, spec.letters))
    if found is not None:
        return found
    # No explicit answer: the last letter written as an option, or a reply that is just a letter.
    stray = [_option_letter(m) for m in _OPTION_TOKEN.finditer(text)]
    stray = [letter for letter in stray if letter in spec.letters]
    if stray:
        return stray[-1]
    return _lone_letter(text, spec.letters)


def _yes_no_in_answer(span: str) -> str | None:
    match = _YES_NO.search(span)
    return match[1].lower() if match else None


def _robust_yesno(text: str, spec: TaskSpec) -> str | None:
    text = _YES_OR_NO.sub(" ", _clean_latex(text))
    found = _first_found(_candidates(text), _yes_no_in_answer)
    if found is not None:
        return found
    answers = [match.group().lower() for match in _YES_NO_ANSWER.finditer(text)]
    return answers[-1] if answers else None


_EXTRACTORS: dict[tuple[str, str], Callable[[str, TaskSpec], str | None]] = {
    ("number", "reference"): _reference_math,
    ("letter", "reference"): _reference_choice,
    ("yes_no", "reference"): _reference_yesno,
    ("number", "robust"): _robust_math,
    ("letter", "robust"): _robust_choice,
    ("yes_no", "robust"): _robust_yesno,
}


def extract_answer(task: str, text: str, mode: str = "robust") -> str | None:
    """The prediction in `text`, normalized like the task's gold answer; None when there is none."""
    spec = _task_spec(task)
    _check_mode(mode)
    return _EXTRACTORS[spec.answer, mode](text, spec)


# --------------------------------------------------------------------------------------------------
# Scoring.


def _check_gold(task: str, spec: TaskSpec, gold: str) -> None:
    if spec.answer == "number":
        try:
            number_value(gold)
        except ValueError as error:
            raise DataError(f"{task}: gold answer {gold!r} is not a number ({error})") from error
    elif spec.answer == "letter" and gold not in set(spec.letters):
        raise DataError(f"{task}: gold answer {gold!r} is not one of the letters {', '.join(spec.letters)}")
    elif spec.answer == "yes_no" and gold not in ("yes", "no"):
        raise DataError(f"{task}: gold answer {gold!r} is not 'yes' or 'no'")


def _same_number(prediction: str, gold: str, mode: str) -> bool:
    """Numbers compare by value; reference mode uses the reference's float/int `==` (§9)."""
    value = _reference_value if mode == "reference" else number_value
    try:
        return value(prediction) == value(gold)
    except (ValueError, InvalidOperation):
        return False  # a prediction that is not a number is simply wrong


def is_correct(task: str, prediction: str | None, gold: str, mode: str = "robust") -> bool:
    """Whether `prediction` (from `extract_answer`) answers `gold` (the prepared `answer`).

    A gold that does not fit the task is a data error, not a wrong prediction.
    """
    spec = _task_spec(task)
    _check_mode(mode)
    _check_gold(task, spec, gold)
    if prediction is None:
        return False
    if spec.answer == "number":
        return _same_number(prediction, gold, mode)
    return prediction == gold
