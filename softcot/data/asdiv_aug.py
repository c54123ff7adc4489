"""ASDiv-Aug, rebuilt from ASDiv.xml: each usable problem replicated K times with its numbers replaced.

The paper's ASDiv-Aug files cannot be verified offline, so we rebuild the idea exactly and
checkably: every number the formula uses is redrawn at a similar magnitude (same integer digits,
same decimal places), in the question and in the formula alike; the answer is the formula's exact
value. A variant whose answer changes kind (turns negative, or gains decimal places, e.g. an
integer problem turning fractional) is redrawn. Problems that cannot be replicated are counted by
reason. The split is made by source problem, so no problem has variants on both sides.
"""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from softcot.data.arithmetic import decimal_places, evaluate, to_decimal
from softcot.data.rows import Loaded
from softcot.data.text_numbers import Mention, find_mentions, substitute
from softcot.errors import DataError
from softcot.numbers import format_decimal, number_value

DATASET = "asdiv-aug"
_FORMULA_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# "9 (apples)", "2.5 (hours)", "18": a number, then optionally its unit in parentheses.
_ANSWER = re.compile(r"\s*([\d,]*\.?\d+)\s*(?:\([^()]*\))?\s*")

# Why a problem is left out; the counts go to stats.json and data/README.md.
NOT_ARITHMETIC = "formula is not plain arithmetic (numbers, + - * /, parentheses) = number"
STATED_RESULT_WRONG = "formula's stated result differs from its exact value"
ANSWER_NOT_NUMBER = "answer is not a number with optional units in parentheses"
ANSWER_MISMATCH = "answer differs from the formula's value"
NUMBER_NOT_IN_QUESTION = "a number the formula uses is not written in the question"
NO_VALID_VARIANT = "no valid variant within max_redraws"


class Unusable(Exception):
    """A problem that cannot be replicated; the message is one of the reasons above."""


@dataclass(frozen=True)
class Problem:
    source_id: str
    question: str
    formula: str  # the original formula, e.g. "(23+5)-12=16"
    expression: str  # its left-hand side, e.g. "(23+5)-12"
    answer: Fraction
    mentions: tuple[Mention, ...]  # the question's numbers that the formula uses


def _text(problem: ET.Element, tag: str, where: str) -> str:
    child = problem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: field {tag!r} is missing or empty")
    return child.text.strip()


def read_problems(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(problem ID, {Body, Question, Answer, Formula}) for every <Problem>; DataError if malformed."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}:{exc.position[0]}: not well-formed XML ({exc})") from exc
    problems = []
    for index, element in enumerate(root.iter("Problem")):
        where = f"{path}: problem {index}"
        source_id = element.get("ID")
        if not source_id:
            raise DataError(f"{where}: attribute 'ID' is missing")
        where += f" ({source_id})"
        fields = {tag: _text(element, tag, where) for tag in ("Body", "Question", "Answer", "Formula")}
        problems.append((source_id, fields))
    if not problems:
        raise DataError(f"{path}: no <Problem> elements")
    return problems


def parse_problem(source_id: str, fields: dict[str, str]) -> Problem:
    """The problem's question, formula and answer, checked for consistency; Unusable if it cannot be used."""
    expression, equals, stated = fields["Formula"].partition("=")
    try:
        if not equals or "=" in stated:
            raise ValueError("not one equation")
        value, stated_value = evaluate(expression), Fraction(number_value(stated))
    except ValueError as exc:
        raise Unusable(NOT_ARITHMETIC) from exc
    if value != stated_value:
        raise Unusable(STATED_RESULT_WRONG)
    answer = _ANSWER.fullmatch(fields["Answer"])
    if answer is None:
        raise Unusable(ANSWER_NOT_NUMBER)
    if Fraction(number_value(answer.group(1))) != value:
        raise Unusable(ANSWER_MISMATCH)

    question = f"{fields['Body']} {fields['Question']}"
    used = {Decimal(n) for n in _FORMULA_NUMBER.findall(expression)}
    mentions = [m for m in find_mentions(question) if m.value in used]
    if {m.value for m in mentions} != used:
        raise Unusable(NUMBER_NOT_IN_QUESTION)
    return Problem(source_id, question, fields["Formula"], expression.strip(), value, tuple(mentions))


def draw_like(value: Decimal, rng: random.Random) -> Decimal:
    """A random number as long as `value`: same count of integer digits and of (non-zero-ending) decimals.

    One-digit integer parts are drawn from 2-9: 0 and 1 would give "1 apples", "x / 1" or a zero divisor.
    """
    exponent = value.normalize().as_tuple().exponent
    places = max(0, -exponent) if isinstance(exponent, int) else 0
    integer = int(value)
    if integer == 0 and places > 0:
        whole = 0
    else:
        digits = len(str(integer))
        whole = rng.randint(10 ** (digits - 1) if digits > 1 else 2, 10**digits - 1)
    if places == 0:
        return Decimal(whole)
    fraction = rng.randrange(10 ** (places - 1)) * 10 + rng.randint(1, 9)
    return Decimal(f"{whole}.{fraction:0{places}d}")


def substitute_formula(expression: str, new_values: dict[Decimal, Decimal]) -> str:
    """`expression` with every number replaced by its new value."""
    return _FORMULA_NUMBER.sub(lambda m: format_decimal(new_values[Decimal(m.group())]), expression)


def _same_kind(original: Fraction, new: Fraction) -> bool:
    """Same sign and no more decimal places: an integer answer stays an integer."""
    places = decimal_places(new)
    return places is not None and places <= decimal_places(original) and (new < 0) == (original < 0)


def make_variants(
    problem: Problem, count: int, max_redraws: int, rng: random.Random
) -> tuple[list[dict], int]:
    """`count` distinct variants of `problem` (question, expression, answer) and the number of redraws."""
    originals = sorted({m.value for m in problem.mentions})
    seen = {problem.question}
    variants, redraws = [], 0
    for _ in range(count):
        for _attempt in range(max_redraws + 1):
            new_values = {old: draw_like(old, rng) for old in originals}
            question = substitute(problem.question, list(problem.mentions), new_values)
            expression = substitute_formula(problem.expression, new_values)
            value = evaluate(expression)  # drawn numbers are never 0, so no division by zero
            if _same_kind(problem.answer, value) and question not in seen:
                break
            redraws += 1
        else:
            raise Unusable(NO_VALID_VARIANT)
        seen.add(question)
        variants.append({"question": question, "expression": expression, "answer": to_decimal(value)})
    return variants, redraws


def build(path: Path, source_file: str, settings: dict) -> tuple[dict[str, list[dict]], dict]:
    """Both splits' records and the build statistics; the same settings always give the same result."""
    seed, count = settings["seed"], settings["variants"]
    problems = read_problems(path)
    reasons: Counter[str] = Counter()
    replicated: dict[str, tuple[Problem, list[dict]]] = {}
    redraws = 0
    for source_id, fields in tqdm(problems, desc="asdiv-aug", unit="problem", leave=False):
        try:
            problem = parse_problem(source_id, fields)
            rng = random.Random(f"{seed}:{source_id}")
            variants, n = make_variants(problem, count, settings["max_redraws"], rng)
        except Unusable as reason:
            reasons[str(reason)] += 1
            continue
        redraws += n
        replicated[source_id] = (problem, variants)

    shuffled = sorted(replicated)
    random.Random(f"{seed}:split").shuffle(shuffled)
    test_ids = set(shuffled[: round(settings["test_fraction"] * len(replicated))])
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for source_id, (problem, variants) in replicated.items():
        split = "test" if source_id in test_ids else "train"
        for k, variant in enumerate(variants):
            answer = format_decimal(variant["answer"])
            splits[split].append(
                {
                    "id": f"{DATASET}-{source_id}-v{k}",
                    "dataset": DATASET,
                    "split": split,
                    "question": variant["question"],
                    "options": None,
                    "rationale": [f"{variant['expression']}={answer}"],
                    "answer": answer,
                    "meta": {
                        "source_file": source_file,
                        "source_id": source_id,
                        "variant": k,
                        "formula": variant["expression"],
                        "source_formula": problem.formula,
                    },
                }
            )
    stats = {
        "source_problems": len(problems),
        "usable_problems": len(replicated),
        "unusable_problems": dict(sorted(reasons.items())),
        "variants_per_problem": count,
        "redraws": redraws,
        "problems": {"train": len(replicated) - len(test_ids), "test": len(test_ids)},
        "records": {split: len(records) for split, records in splits.items()},
        "settings": settings,
    }
    return splits, stats


def load(files: dict[str, Path], split: str, settings: dict) -> Loaded:
    ((source_file, path),) = files.items()
    splits, stats = build(path, source_file, settings["asdiv_aug"])
    return Loaded(splits[split], stats)
