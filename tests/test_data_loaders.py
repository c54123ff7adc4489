"""Each dataset loader on small raw files written here (never copies of the real ones)."""

import json

import pytest

from softcot.data import aqua, date, gsm8k, strategyqa
from softcot.data.schema import check_examples
from softcot.errors import DataError


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def finish(records, dataset, split):
    """What prepare adds before validation, so the loaders' output can be checked against the schema."""
    for record in records:
        record["meta"].update(substitute=False, substitute_reason=None)
    check_examples(records, dataset, split, "fixture")
    return records


# --- GSM8K ------------------------------------------------------------------------------------

GSM8K_ROWS = [
    {
        "question": "Eggs? ",
        "answer": "How many? ** 16 - 3 = <<16-3=13>>13 eggs.\nSo $<<13*2=26>>26.\n#### 26",
    },
    {"question": "Cold?", "answer": "It drops 5 - 15 = <<5-15=-10>>-10 degrees.\n\n#### -10"},
    {"question": "Big?", "answer": "A lot.\n#### 1,250"},
    {"question": "Half?", "answer": "#### 2.50"},
]


def test_gsm8k_rationale_gold_and_provenance(tmp_path):
    path = jsonl(tmp_path / "test_socratic.jsonl", GSM8K_ROWS)
    records = finish(gsm8k.load({"gsm8k/test_socratic.jsonl": path}, "test", {}).records, "gsm8k", "test")
    assert [r["answer"] for r in records] == ["26", "-10", "1250", "2.5"]
    assert records[0]["rationale"] == ["How many? ** 16 - 3 = <<16-3=13>>13 eggs.", "So $<<13*2=26>>26."]
    assert records[1]["rationale"] == ["It drops 5 - 15 = <<5-15=-10>>-10 degrees."]  # blank line dropped
    assert records[3]["rationale"] == []
    assert records[0]["question"] == "Eggs?"
    assert [r["id"] for r in records] == [f"gsm8k-test-0000{i}" for i in range(4)]
    assert records[2]["meta"]["source_file"] == "gsm8k/test_socratic.jsonl"
    assert records[2]["meta"]["line"] == 3
    assert all(r["options"] is None for r in records)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"answer": "#### 1"}, "field 'question' is missing"),
        ({"question": "q", "answer": 5}, "field 'answer': expected str, got int"),
        ({"question": "q", "answer": "no final line"}, "the last line must be '#### <number>'"),
        ({"question": "q", "answer": "step\n#### twelve"}, "not a number: ' twelve' after '####'"),
    ],
)
def test_gsm8k_malformed_row_names_file_line_and_field(tmp_path, row, message):
    path = jsonl(tmp_path / "train.jsonl", [GSM8K_ROWS[0], row])
    with pytest.raises(DataError, match=rf"train.jsonl:2: .*{message}"):
        gsm8k.load({"gsm8k/train.jsonl": path}, "train", {})


def test_gsm8k_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GSM8K_ROWS[0]) + "\n{oops\n")
    with pytest.raises(DataError, match="train.jsonl:2: not valid JSON"):
        gsm8k.load({"gsm8k/train.jsonl": path}, "train", {})


# --- AQuA -------------------------------------------------------------------------------------

AQUA_ROW = {
    "question": "Two trains...\nHow long?",
    "options": ["A)5(√3 + 1)", "B) 6", "C)7 ", "D)$8.40", "E)None of these"],
    "rationale": "Speed = 2\n\nAnswer: B",
    "correct": "B",
}


def test_aqua_options_kept_separately_without_prefix(tmp_path):
    path = jsonl(tmp_path / "test.json", [AQUA_ROW, dict(AQUA_ROW, correct="E")])
    records = finish(aqua.load({"aqua/test.json": path}, "test", {}).records, "aqua", "test")
    assert records[0]["options"] == {"A": "5(√3 + 1)", "B": "6", "C": "7", "D": "$8.40", "E": "None of these"}
    assert records[0]["question"] == "Two trains...\nHow long?"
    assert [r["answer"] for r in records] == ["B", "E"]
    assert records[0]["rationale"] == ["Speed = 2", "Answer: B"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options": ["A)1", "C)2", "B)3", "D)4", "E)5"]}, r"field 'options'\[1\]: expected 'B\)<text>'"),
        ({"options": ["A)1", "B)", "C)3", "D)4", "E)5"]}, r"field 'options'\[1\]"),
        ({"options": ["A)1"]}, "field 'options': expected 2 to 6 options, got 1"),
        ({"options": "A)1 B)2"}, "field 'options': expected list, got str"),
        ({"correct": "F"}, "field 'correct': 'F' is not one of the options"),
    ],
)
def test_aqua_bad_options_or_gold(tmp_path, change, message):
    path = jsonl(tmp_path / "dev.json", [AQUA_ROW, dict(AQUA_ROW, **change)])
    with pytest.raises(DataError, match=rf"dev.json:2: {message}"):
        aqua.load({"aqua/dev.json": path}, "train", {"aqua_train_subset": {"size": None, "seed": 0}})


# --- StrategyQA -------------------------------------------------------------------------------


def strategy_row(i, answer):
    return {
        "qid": f"q{i}",
        "question": f"Question {i}?",
        "answer": answer,
        "facts": [f"fact {i}a", f"fact {i}b"],
    }


def write_strategyqa(tmp_path, n_first, n_second):
    first = [strategy_row(i, i % 2 == 0) for i in range(n_first)]
    second = [strategy_row(n_first + i, False) for i in range(n_second)]
    (tmp_path / "train.json").write_text(json.dumps(first))
    (tmp_path / "dev.json").write_text(json.dumps(second))
    return {"strategyqa/train.json": tmp_path / "train.json", "strategyqa/dev.json": tmp_path / "dev.json"}


def test_strategyqa_splits_the_concatenation_by_position(tmp_path):
    files = write_strategyqa(tmp_path, 7, 3)
    settings = {"strategyqa": {"test_fraction": 0.2}}
    train = finish(strategyqa.load(files, "train", settings).records, "strategyqa", "train")
    test = finish(strategyqa.load(files, "test", settings).records, "strategyqa", "test")
    assert [r["meta"]["original_id"] for r in train] == [f"q{i}" for i in range(8)]
    assert [r["meta"]["original_id"] for r in test] == ["q8", "q9"]
    assert train[7]["meta"] == {
        "source_file": "strategyqa/dev.json",
        "index": 0,
        "original_id": "q7",
        "substitute": False,
        "substitute_reason": None,
    }
    assert [r["answer"] for r in train[:3]] == ["yes", "no", "yes"]
    assert train[0]["rationale"] == ["fact 0a", "fact 0b"]
    assert test[0]["id"] == "strategyqa-test-00000"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": "yes"}, "field 'answer': expected bool, got str"),
        ({"facts": ["ok", 3]}, r"field 'facts'\[1\]: expected str, got int"),
        ({"question": None}, "field 'question': expected str, got NoneType"),
    ],
)
def test_strategyqa_malformed_record_names_file_index_and_field(tmp_path, change, message):
    files = write_strategyqa(tmp_path, 2, 1)
    rows = json.loads((tmp_path / "train.json").read_text())
    rows[1].update(change)
    (tmp_path / "train.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=rf"train.json: record 1: {message}"):
        strategyqa.load(files, "train", {"strategyqa": {"test_fraction": 0.2}})


# --- Date Understanding -----------------------------------------------------------------------


def date_example(target="(B)", options="(A) 12/11/1937\n(B) 12/25/1937\n(C) 01/04/1938"):
    return {
        "input": f"Today is Christmas Eve of 1937. What is the date tomorrow?\nOptions:\n{options}",
        "target": target,
    }


def write_date(tmp_path, examples):
    path = tmp_path / "date_understanding.json"
    path.write_text(json.dumps({"canary": "x", "examples": examples}))
    return {"date_understanding/date_understanding.json": path}


def test_date_parses_question_options_and_letter(tmp_path):
    files = write_date(tmp_path, [date_example(), date_example("(C)")])
    records = finish(date.load(files, "test", {}).records, "date", "test")
    assert records[0]["question"] == "Today is Christmas Eve of 1937. What is the date tomorrow?"
    assert records[0]["options"] == {"A": "12/11/1937", "B": "12/25/1937", "C": "01/04/1938"}
    assert [r["answer"] for r in records] == ["B", "C"]
    assert records[1]["meta"]["index"] == 1


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (date_example(target="B)"), "field 'target'"),
        (date_example(target="(D)"), "field 'target'"),
        (date_example(options="(A) x\n(C) y"), "option 1 should read '\\(B\\) <text>'"),
        ({"input": "No options here", "target": "(A)"}, "field 'input'"),
        ({"target": "(A)"}, "field 'input' is missing"),
    ],
)
def test_date_malformed_example(tmp_path, example, message):
    files = write_date(tmp_path, [date_example(), example])
    with pytest.raises(DataError, match=rf"date_understanding.json: examples\[1\]: .*{message}"):
        date.load(files, "test", {})
