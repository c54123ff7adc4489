"""The one canonical form of a numeric answer, shared by the data loaders and the answer extractor.

Gold answers and predictions are compared as strings, so both sides must be written the same
way: "18", "-2", "7.5" (no commas, no trailing zeros, no exponent, no "+").
"""

from __future__ import annotations

import re
from decimal import Decimal

# After commas are removed: an optional sign, then digits with an optional fraction (".5" and "5." too).
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def number_value(text: str) -> Decimal:
    """The exact value of a written number such as "1,234.50" or "-3"; ValueError if it is not one."""
    cleaned = text.strip().replace(",", "")
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        raise ValueError(f"not a number: {text!r}")
    return Decimal(cleaned)


def format_decimal(value: Decimal) -> str:
    """Canonical text of a value: no exponent, no trailing zeros, no negative zero.

    Trailing zeros are stripped from the text, not with `Decimal.normalize()`, which rounds to
    the context's 28 digits and would change a long model output's value.
    """
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def normalize_number(text: str) -> str:
    """Canonical text of a written number: "1,000" -> "1000", "7.50" -> "7.5", "3.0" -> "3", "-0" -> "0"."""
    return format_decimal(number_value(text))
