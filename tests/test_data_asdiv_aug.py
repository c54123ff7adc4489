"""ASDiv-Aug on a small ASDiv-like XML written here: exactness, determinism, split hygiene, reasons."""

import re
from decimal import Decimal
from fractions import Fraction

import pytest

from softcot.data import asdiv_aug
from softcot.data.arithmetic import decimal_places, evaluate, to_decimal
from softcot.data.text_numbers import find_mentions
from softcot.errors import DataError
from softcot.io import write_jsonl_atomic
from softcot.numbers import number_value

SETTINGS = {"seed": 7, "variants": 5, "max_redraws": 50, "test_fraction": 0.4}

# (ID, Body, Question, Answer, Formula)
PROBLEMS = [
    (
        "p-words",
        "Seven red apples and two green apples are in the basket.",
        "How many apples are there?",
        "9 (apples)",
        "7+2=9",
    ),
    (
        "p-commas",
        "Jake counted 3,482 snails and then 1,250 more.",
        "How many snails did he count?",
        "4732 (snails)",
        "3482+1250=4732",
    ),
    (
        "p-decimals",
        "A pen costs $2.50 and a pad costs $1.25.",
        "How much do both cost?",
        "3.75 (dollars)",
        "2.50+1.25=3.75",
    ),
    ("p-minus", "Tom had 95 marbles. He lost 38 of them.", "How many are left?", "57 (marbles)", "95-38=57"),
    (
        "p-divide",
        "There are 48 cookies in 6 equal boxes.",
        "How many are in each box?",
        "8 (cookies)",
        "48/6=8",
    ),
    (
        "p-lcm",
        "Sam swims every 11th day and runs every 3rd day.",
        "When do both fall on one day?",
        "33 (days)",
        "LCM[11,3]=33",
    ),
    ("p-hidden", "Kate is twice as old as Bob. Bob is 12.", "How old is Kate?", "24 (years old)", "2*12=24"),
    ("p-ratio", "Kathy scored 360 and then 420.", "What is the ratio?", "6:7", "360+420=780"),
    ("p-rounded", "Ten pies are shared by 3 friends, 10 pies in all.", "How much each?", "3.33", "10/3=3.33"),
    ("p-mismatch", "Ann has 4 pens and 5 pencils.", "How many things?", "10 (things)", "4+5=9"),
]


def asdiv_xml(problems):
    body = "".join(
        f'<Problem ID="{pid}" Grade="1" Source="fixture"><Body>{b}</Body><Question>{q}</Question>'
        f"<Solution-Type>Any</Solution-Type><Answer>{a}</Answer><Formula>{f}</Formula></Problem>\n"
        for pid, b, q, a, f in problems
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<Machine-Reading-Corpus-File><ProblemSet>\n'
        f"{body}</ProblemSet></Machine-Reading-Corpus-File>\n"
    )


@pytest.fixture
def xml_path(tmp_path):
    path = tmp_path / "ASDiv.xml"
    path.write_text(asdiv_xml(PROBLEMS), encoding="utf-8")
    return path


def build(path, **changes):
    return asdiv_aug.build(path, "asdiv/ASDiv.xml", dict(SETTINGS, **changes))


def all_records(splits):
    return splits["train"] + splits["test"]


def test_every_answer_is_the_value_of_its_formula(xml_path):
    records = all_records(build(xml_path)[0])
    assert records
    for record in records:
        formula = record["meta"]["formula"]
        assert to_decimal(evaluate(formula)) == number_value(record["answer"])
        assert record["rationale"] == [f"{formula}={record['answer']}"]


def test_numbers_are_replaced_in_question_and_formula_alike(xml_path):
    by_source = {}
    for record in all_records(build(xml_path)[0]):
        by_source.setdefault(record["meta"]["source_id"], []).append(record)
    for record in by_source["p-words"]:
        question_numbers = sorted(m.value for m in find_mentions(record["question"]))
        formula_numbers = sorted(Decimal(n) for n in re.findall(r"\d+", record["meta"]["formula"]))
        assert question_numbers == formula_numbers
        assert "Seven" not in record["question"]
    for record in by_source["p-commas"]:
        assert re.fullmatch(
            r"Jake counted \d,\d{3} snails and then \d,\d{3} more\. How many snails did he count\?",
            record["question"],
        )
    for record in by_source["p-decimals"]:
        assert re.fullmatch(
            r"A pen costs \$\d\.\d{2} and a pad costs \$\d\.\d{2}\. How much do both cost\?",
            record["question"],
        )


def test_variants_keep_the_answer_kind(xml_path):
    for record in all_records(build(xml_path)[0]):
        value = Fraction(number_value(record["answer"]))
        assert value >= 0
        allowed = 2 if record["meta"]["source_id"] == "p-decimals" else 0
        assert decimal_places(value) <= allowed, record


def test_k_distinct_variants_per_usable_problem_none_equal_to_the_original(xml_path):
    splits, stats = build(xml_path)
    originals = {pid: f"{b} {q}" for pid, b, q, _, _ in PROBLEMS}
    by_source = {}
    for record in all_records(splits):
        by_source.setdefault(record["meta"]["source_id"], []).append(record)
    assert set(by_source) == {"p-words", "p-commas", "p-decimals", "p-minus", "p-divide"}
    for source_id, records in by_source.items():
        assert [r["meta"]["variant"] for r in records] == [0, 1, 2, 3, 4]
        questions = {r["question"] for r in records}
        assert len(questions) == 5 and originals[source_id] not in questions
        assert [r["id"] for r in records] == [f"asdiv-aug-{source_id}-v{k}" for k in range(5)]
    assert stats["usable_problems"] == 5 and stats["source_problems"] == len(PROBLEMS)


def test_unusable_problems_are_counted_by_reason(xml_path):
    stats = build(xml_path)[1]
    assert stats["unusable_problems"] == {
        asdiv_aug.NOT_ARITHMETIC: 1,
        asdiv_aug.NUMBER_NOT_IN_QUESTION: 1,
        asdiv_aug.ANSWER_NOT_NUMBER: 1,
        asdiv_aug.STATED_RESULT_WRONG: 1,
        asdiv_aug.ANSWER_MISMATCH: 1,
    }


def test_a_problem_without_enough_distinct_variants_is_unusable_after_bounded_redraws(tmp_path):
    path = tmp_path / "ASDiv.xml"
    # A one-digit number has 7 other values (2-9), so 8 distinct variants cannot exist.
    path.write_text(asdiv_xml([("p-one", "Ann has 4 pens and 4 pencils.", "How many?", "8", "4+4=8")]))
    stats = build(path, variants=8, max_redraws=3)[1]
    assert stats["unusable_problems"] == {asdiv_aug.NO_VALID_VARIANT: 1}


def test_split_is_by_source_problem(xml_path):
    splits, stats = build(xml_path)
    train_ids = {r["meta"]["source_id"] for r in splits["train"]}
    test_ids = {r["meta"]["source_id"] for r in splits["test"]}
    assert not train_ids & test_ids
    assert len(test_ids) == round(0.4 * 5) and len(train_ids) == 3
    assert stats["problems"] == {"train": 3, "test": 2}
    assert stats["records"] == {"train": 15, "test": 10}
    assert {r["split"] for r in splits["test"]} == {"test"}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(xml_path, tmp_path):
    def written(name, **changes):
        splits = build(xml_path, **changes)[0]
        path = tmp_path / name
        write_jsonl_atomic(path, all_records(splits))
        return path.read_bytes()

    assert written("a.jsonl") == written("b.jsonl")
    assert written("a.jsonl") != written("c.jsonl", seed=8)


def test_malformed_problem_names_file_problem_and_field(tmp_path):
    path = tmp_path / "ASDiv.xml"
    path.write_text(asdiv_xml(PROBLEMS[:2]).replace("<Formula>3482+1250=4732</Formula>", ""))
    with pytest.raises(DataError, match=r"ASDiv.xml: problem 1 \(p-commas\): field 'Formula' is missing"):
        build(path)


def test_broken_xml_names_the_line(tmp_path):
    path = tmp_path / "ASDiv.xml"
    path.write_text(asdiv_xml(PROBLEMS[:2]).replace("</Body>", "", 1))
    with pytest.raises(DataError, match=r"ASDiv.xml:\d+: not well-formed XML"):
        build(path)


# --- the pieces -------------------------------------------------------------------------------


def test_find_mentions_reads_numerals_and_simple_number_words_only():
    text = (
        "Twenty-two boys, eight hundred ten cans, 3,482 snails, $60.00 each, the 11th day, no one, forty two."
    )
    mentions = find_mentions(text)
    assert [(text[m.start : m.end], m.value) for m in mentions] == [
        ("Twenty-two", 22),
        ("3,482", 3482),
        ("60.00", 60),
        ("forty two", 42),
    ]
    assert mentions[1].render(Decimal(1250)) == "1,250"
    assert mentions[2].render(Decimal("7.5")) == "7.50"
    assert mentions[0].render(Decimal(31)) == "31"


def test_evaluate_is_exact_and_refuses_anything_but_arithmetic():
    assert evaluate("(23+5)-12") == 16
    assert evaluate("3.0-0.5") == Fraction(5, 2)
    assert evaluate("10/3") == Fraction(10, 3)
    for bad in ["2**3", "-3+4", "x+1", "__import__('os')", "1e3", "abs(2)", "4/0", "7 = 7"]:
        with pytest.raises(ValueError):
            evaluate(bad)


def test_to_decimal_needs_a_terminating_expansion():
    assert to_decimal(Fraction(15, 4)) == Decimal("3.75")
    assert decimal_places(Fraction(1, 3)) is None
    with pytest.raises(ValueError):
        to_decimal(Fraction(1, 3))
