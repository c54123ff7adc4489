"""`softcot prepare` end to end on a fixture mirror: provenance, settings, atomic failure, the CLI."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from softcot import cli
from softcot.config import check_data_settings
from softcot.data.datasets import load_catalog, result_settings
from softcot.data.prepare import prepare
from softcot.data.schema import read_prepared
from softcot.data.sources import MIRROR_ENV, RawFile, RawFiles
from softcot.errors import ChecksumError, ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
DATA = yaml.safe_load((REPO / "params.yaml").read_text())["data"]
GSM8K_ROW = {"question": "Eggs?", "answer": "16 - 3 = 13\n#### 13"}


def fixture_mirror(tmp_path, files: dict[str, bytes]) -> RawFiles:
    """A mirror holding `files` and a registry that pins exactly those bytes."""
    mirror = tmp_path / "mirror"
    registry = {}
    for key, content in files.items():
        (mirror / key).parent.mkdir(parents=True, exist_ok=True)
        (mirror / key).write_bytes(content)
        directory, name = key.split("/")
        registry[key] = RawFile(
            directory,
            name,
            f"https://example.invalid/{key}",
            "MIT",
            sha256=hashlib.sha256(content).hexdigest(),
        )
    return RawFiles(registry, mirror=mirror)


def gsm8k_bytes(n=3):
    return "".join(json.dumps(dict(GSM8K_ROW, question=f"Eggs {i}?")) + "\n" for i in range(n)).encode()


def test_prepare_writes_valid_records_with_substitute_provenance(tmp_path):
    files = fixture_mirror(
        tmp_path, {"gsm8k/train.jsonl": gsm8k_bytes(), "gsm8k/test_socratic.jsonl": gsm8k_bytes(2)}
    )
    train, test = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "test.jsonl"
    assert prepare("gsm8k", "train", {"variant": "offline"}, files, train) == 3
    assert prepare("gsm8k", "test", {"variant": "offline"}, files, test) == 2
    train_records, test_records = read_prepared(train), read_prepared(test)
    assert train_records[0]["meta"]["substitute"] is True
    assert "train_socratic.jsonl" in train_records[0]["meta"]["substitute_reason"]
    assert train_records[0]["meta"]["source_file"] == "gsm8k/train.jsonl"
    assert (
        test_records[0]["meta"]["substitute"] is False
        and test_records[0]["meta"]["substitute_reason"] is None
    )


def test_paper_variant_reads_the_papers_file(tmp_path):
    files = fixture_mirror(tmp_path, {"gsm8k/train_socratic.jsonl": gsm8k_bytes(4)})
    out = tmp_path / "train.jsonl"
    assert prepare("gsm8k", "train", {"variant": "paper"}, files, out) == 4
    meta = read_prepared(out)[0]["meta"]
    assert meta["source_file"] == "gsm8k/train_socratic.jsonl" and meta["substitute"] is False


def test_checksum_failure_leaves_no_prepared_file(tmp_path):
    files = fixture_mirror(tmp_path, {"gsm8k/test_socratic.jsonl": gsm8k_bytes()})
    (files.mirror / "gsm8k" / "test_socratic.jsonl").write_bytes(gsm8k_bytes(2))  # the mirror changed
    out = tmp_path / "out" / "test.jsonl"
    with pytest.raises(ChecksumError) as info:
        prepare("gsm8k", "test", {"variant": "offline"}, files, out)
    message = str(info.value)
    assert "test_socratic.jsonl" in message
    assert hashlib.sha256(gsm8k_bytes()).hexdigest() in message
    assert hashlib.sha256(gsm8k_bytes(2)).hexdigest() in message
    assert not out.exists()


def test_malformed_row_leaves_no_partial_file(tmp_path):
    content = gsm8k_bytes() + b'{"question": "q", "answer": "no gold line"}\n'
    files = fixture_mirror(tmp_path, {"gsm8k/test_socratic.jsonl": content})
    out = tmp_path / "out" / "test.jsonl"
    with pytest.raises(DataError, match=r"test_socratic.jsonl:4: field 'answer'"):
        prepare("gsm8k", "test", {"variant": "offline"}, files, out)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_asdiv_aug_writes_its_stats_where_asked(tmp_path):
    xml = (
        b'<?xml version="1.0" ?><Machine-Reading-Corpus-File><ProblemSet>'
        b'<Problem ID="p1"><Body>Tom has 35 cards and 47 stamps.</Body><Question>How many things?</Question>'
        b"<Solution-Type>Addition</Solution-Type><Answer>82 (things)</Answer>"
        b"<Formula>35+47=82</Formula></Problem>"
        b"</ProblemSet></Machine-Reading-Corpus-File>"
    )
    files = fixture_mirror(tmp_path, {"asdiv/ASDiv.xml": xml})
    settings = {"asdiv_aug": dict(DATA["asdiv_aug"], variants=2)}
    out = tmp_path / "asdiv-aug" / "train.jsonl"
    assert prepare("asdiv-aug", "train", settings, files, out, tmp_path / "build-stats.json") == 2
    stats = json.loads((tmp_path / "build-stats.json").read_text())
    assert stats["usable_problems"] == 1 and stats["records"] == {"train": 2, "test": 0}


def test_date_has_no_train_split(tmp_path):
    with pytest.raises(DataError, match="dataset 'date' has no 'train' split"):
        prepare("date", "train", {}, fixture_mirror(tmp_path, {}), tmp_path / "train.jsonl")


# --- settings ---------------------------------------------------------------------------------


def test_result_settings_hold_only_what_changes_a_dataset():
    assert result_settings(DATA, "gsm8k") == {"variant": DATA["variant"]}
    assert result_settings(DATA, "asdiv-aug") == {"asdiv_aug": DATA["asdiv_aug"]}
    assert result_settings(DATA, "strategyqa") == {"strategyqa": DATA["strategyqa"]}
    assert result_settings(DATA, "date") == {}
    for spec in load_catalog().values():
        assert set(spec.settings) <= set(DATA), spec.name


@pytest.mark.parametrize(
    ("dataset", "settings", "message"),
    [
        ("gsm8k", {}, r"expected the keys \['variant'\]"),
        ("gsm8k", {"variant": "offline", "mirror": "/x"}, r"got \['mirror', 'variant'\]"),
        ("gsm8k", {"variant": "online"}, r"data.variant: 'online' is not one of"),
        ("strategyqa", {"strategyqa": {"test_fraction": 1.5}}, r"data.strategyqa.test_fraction: 1.5"),
        ("asdiv-aug", {"asdiv_aug": {"seed": 1}}, r"data.asdiv_aug: 'variants' is a required property"),
    ],
)
def test_bad_settings_name_the_key(dataset, settings, message):
    with pytest.raises(ConfigError, match=message):
        check_data_settings(dataset, settings)


# --- the command line -------------------------------------------------------------------------


def test_cli_reports_a_corrupt_mirror_file_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test_socratic.jsonl").write_bytes(gsm8k_bytes())
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    out = tmp_path / "prepared" / "test.jsonl"
    status = cli.main(
        [
            "prepare",
            "--dataset",
            "gsm8k",
            "--split",
            "test",
            "--out",
            str(out),
            "--settings",
            '{"variant": "offline"}',
        ]
    )
    error = capsys.readouterr().err
    assert status == 2
    assert "test_socratic.jsonl" in error and "expected c96673362fa7a699" in error
    assert f"actual {hashlib.sha256(gsm8k_bytes()).hexdigest()}" in error
    assert not out.exists()


def test_cli_rejects_settings_that_are_not_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    status = cli.main(
        [
            "prepare",
            "--dataset",
            "gsm8k",
            "--split",
            "test",
            "--out",
            str(tmp_path / "t.jsonl"),
            "--settings",
            "{variant: offline}",
        ]
    )
    assert status == 2
    assert "--settings: not valid JSON" in capsys.readouterr().err


def test_the_aqua_train_subset_is_a_seeded_sample_in_file_order(tmp_path):
    rows = [
        {"question": f"q{i}", "options": ["A)1", "B)2"], "rationale": "r", "correct": "A"} for i in range(20)
    ]
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    files = fixture_mirror(tmp_path, {"aqua/dev.json": body, "aqua/test.json": body})
    settings = {"variant": "offline", "aqua_train_subset": {"size": 5, "seed": 1}}
    out = tmp_path / "train.jsonl"
    assert prepare("aqua", "train", settings, files, out) == 5
    questions = [json.loads(line)["question"] for line in out.read_text().splitlines()]
    assert questions == sorted(questions, key=lambda q: int(q[1:])) and len(set(questions)) == 5
    again = tmp_path / "again.jsonl"
    prepare("aqua", "train", settings, files, again)
    assert again.read_bytes() == out.read_bytes()
    # The test split is never subsampled.
    assert prepare("aqua", "test", settings, files, tmp_path / "test.jsonl") == 20
