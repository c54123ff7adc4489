from decimal import Decimal

import pytest

from softcot.numbers import format_decimal, normalize_number, number_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", "18"),
        ("-2", "-2"),
        ("7.5", "7.5"),
        ("7.50", "7.5"),
        ("3.0", "3"),
        ("1,000", "1000"),
        ("-1,234.50", "-1234.5"),
        (" 42 ", "42"),
        ("+3", "3"),
        ("-0", "0"),
        ("0.000", "0"),
        (".5", "0.5"),
        ("100", "100"),
        ("1200.00", "1200"),
        ("0.05", "0.05"),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "12abc", "1e5", "nan", "Infinity", "--3", "1.2.3", "$5", "1 000"]
)
def test_normalize_number_rejects_what_is_not_a_plain_number(text):
    with pytest.raises(ValueError, match="not a number"):
        normalize_number(text)


def test_number_value_is_exact():
    assert number_value("0.1") + number_value("0.2") == Decimal("0.3")
    assert number_value("1,000,000") == Decimal(1_000_000)


def test_format_decimal_never_uses_an_exponent():
    assert format_decimal(Decimal("1E+3")) == "1000"
    assert format_decimal(Decimal("-0.0")) == "0"


def test_long_numbers_keep_every_digit():
    ones = "1" * 40
    assert normalize_number(ones) == ones
    assert normalize_number(ones + ".500") == ones + ".5"
    assert normalize_number("1" + "0" * 35) == "1" + "0" * 35
