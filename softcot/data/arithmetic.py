"""Exact evaluation of plain arithmetic (numbers, + - * /, parentheses), never through eval().

ASDiv-Aug recomputes every answer from its formula; exact fractions make "is the answer still
an integer" a yes/no question instead of a floating-point guess.
"""

from __future__ import annotations

import ast
import operator
import re
from decimal import Decimal
from fractions import Fraction

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_LITERAL = re.compile(r"\d+(?:\.\d+)?")


def evaluate(expression: str) -> Fraction:
    """The exact value of `expression`; ValueError if it is anything but plain arithmetic."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not plain arithmetic: {expression!r}") from exc
    source = expression.strip()

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError(f"division by zero in {expression!r}")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.Constant):
            literal = ast.get_source_segment(source, node)
            if literal is not None and _LITERAL.fullmatch(literal):
                return Fraction(literal)
        raise ValueError(f"not plain arithmetic: {ast.get_source_segment(source, node)!r} in {expression!r}")

    return value(tree.body)


def decimal_places(value: Fraction) -> int | None:
    """Digits after the point of `value` written out exactly; None if its decimal never ends (1/3)."""
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return None
    return max(twos, fives)


def to_decimal(value: Fraction) -> Decimal:
    """`value` as an exact Decimal; ValueError if its decimal expansion does not terminate."""
    places = decimal_places(value)
    if places is None:
        raise ValueError(f"{value} has no finite decimal expansion")
    scaled = value.numerator * (10**places // value.denominator)
    return Decimal(f"{scaled}E-{places}")
