"""Numbers mentioned in a word problem's text, as numerals ("3,482", "60.00") or words ("forty-two").

ASDiv-Aug replaces the numbers a formula uses; it must find each one in the question and write
its replacement in the same style (thousands commas, decimals shown), so this module reads and
renders mentions and does nothing else.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import yaml

WORDS_PATH = Path(__file__).with_name("number_words.yaml")

# A numeral not glued to a letter, digit or decimal point: "11th" and "x5" are not numbers here.
_NUMERAL = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\w|[.,]\d)")


@dataclass(frozen=True)
class Mention:
    """A number in a text: its span, its value and how it is written."""

    start: int
    end: int
    value: Decimal
    decimals: int  # digits shown after the point ("60.00" -> 2)
    commas: bool  # written with thousands separators
    word: bool  # written in words

    def render(self, value: Decimal) -> str:
        """`value` written in this mention's style (words become numerals)."""
        if self.word:
            return format(value, "f")
        return format(value, f"{',' if self.commas else ''}.{self.decimals}f")


@functools.cache
def _words() -> tuple[dict[str, int], dict[str, int], re.Pattern, frozenset[str]]:
    table = yaml.safe_load(WORDS_PATH.read_text(encoding="utf-8"))
    vocabulary = sorted([*table["units"], *table["tens"], *table["scales"]], key=len, reverse=True)
    word = "(?:" + "|".join(vocabulary) + ")"
    run = re.compile(rf"\b{word}(?:(?:[\s-]+|\s+and\s+){word})*\b", re.IGNORECASE)
    return table["units"], table["tens"], run, frozenset(table["not_alone"])


def _word_value(run: str) -> int | None:
    """The value of a run of number words, or None if it is not a unit, a ten, or a ten then a unit."""
    units, tens, _, not_alone = _words()
    words = [w.lower() for w in re.split(r"[\s-]+", run)]
    if len(words) == 1 and words[0] not in not_alone:
        return units.get(words[0], tens.get(words[0]))
    if len(words) == 2 and words[0] in tens and words[1] in units and 0 < units[words[1]] < 10:
        return tens[words[0]] + units[words[1]]
    return None


def find_mentions(text: str) -> list[Mention]:
    """Every readable number in `text`, in order of position."""
    mentions = []
    for match in _NUMERAL.finditer(text):
        written = match.group()
        decimals = len(written.partition(".")[2])
        value = Decimal(written.replace(",", ""))
        mentions.append(Mention(match.start(), match.end(), value, decimals, "," in written, False))
    for match in _words()[2].finditer(text):
        value = _word_value(match.group())
        if value is not None:
            mentions.append(Mention(match.start(), match.end(), Decimal(value), 0, False, True))
    return sorted(mentions, key=lambda m: m.start)


def substitute(text: str, mentions: list[Mention], new_values: dict[Decimal, Decimal]) -> str:
    """`text` with every mention whose value is a key of `new_values` rewritten to the mapped value."""
    pieces, last = [], 0
    for mention in mentions:
        if mention.value in new_values:
            pieces += [text[last : mention.start], mention.render(new_values[mention.value])]
            last = mention.end
    return "".join(pieces) + text[last:]
