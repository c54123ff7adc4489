"""All five datasets prepared from the real mirror (../shared/datasets or $SOFTCOT_DATA_MIRROR)."""

import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from softcot.data.arithmetic import evaluate, to_decimal
from softcot.data.datasets import result_settings
from softcot.data.prepare import prepare
from softcot.data.schema import read_prepared
from softcot.data.sources import MIRROR_ENV, RawFiles, load_registry
from softcot.errors import ChecksumError
from softcot.numbers import number_value

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get(MIRROR_ENV) or REPO.parent / "shared" / "datasets")
DATA = yaml.safe_load((REPO / "params.yaml").read_text())["data"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no dataset mirror at {MIRROR}"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Every split of every dataset, prepared once: {(dataset, split): records}."""
    out = tmp_path_factory.mktemp("prepared")
    files = RawFiles(load_registry(), mirror=MIRROR)
    splits = [
        (ds, split) for ds in ("gsm8k", "asdiv-aug", "aqua", "strategyqa") for split in ("train", "test")
    ]
    result = {}
    for dataset, split in [*splits, ("date", "test")]:
        path = out / dataset / f"{split}.jsonl"
        prepare(dataset, split, result_settings(DATA, dataset), files, path, path.parent / "stats.json")
        result[dataset, split] = read_prepared(path)
    result["dir"] = out
    return result


def test_gsm8k_keeps_both_negative_test_answers(prepared):
    test = prepared["gsm8k", "test"]
    assert len(test) == 1319 and len(prepared["gsm8k", "train"]) == 7473
    assert sorted(r["answer"] for r in test if r["answer"].startswith("-")) == ["-10", "-3"]


def test_aqua_has_five_options_per_question(prepared):
    test = prepared["aqua", "test"]
    assert len(test) == 254
    assert all(list(r["options"]) == ["A", "B", "C", "D", "E"] for r in test)


def test_date_answers_are_option_letters(prepared):
    test = prepared["date", "test"]
    assert len(test) == 250
    assert {r["answer"] for r in test} <= set("ABCDEF")
    assert all(r["answer"] in r["options"] for r in test)


def test_strategyqa_is_split_80_20_with_yes_no_answers(prepared):
    train, test = prepared["strategyqa", "train"], prepared["strategyqa", "test"]
    assert (len(train), len(test)) == (1832, 458)
    assert {r["answer"] for r in train + test} == {"yes", "no"}
    assert not {r["meta"]["original_id"] for r in train} & {r["meta"]["original_id"] for r in test}


def test_asdiv_aug_is_exact_and_split_by_source_problem(prepared):
    train, test = prepared["asdiv-aug", "train"], prepared["asdiv-aug", "test"]
    for record in train + test:
        assert to_decimal(evaluate(record["meta"]["formula"])) == number_value(record["answer"])
    per_source = Counter(r["meta"]["source_id"] for r in train + test)
    k = DATA["asdiv_aug"]["variants"]
    assert sum(n == k for n in per_source.values()) > 0.9 * len(per_source)
    assert len(per_source) > 1000
    assert not {r["meta"]["source_id"] for r in train} & {r["meta"]["source_id"] for r in test}


def test_asdiv_aug_rebuild_is_byte_identical(prepared, tmp_path):
    files = RawFiles(load_registry(), mirror=MIRROR)
    settings = result_settings(DATA, "asdiv-aug")
    # Test first, then train: the order of the builds must not matter.
    for split in ("test", "train"):
        prepare("asdiv-aug", split, settings, files, tmp_path / f"{split}.jsonl", tmp_path / "stats.json")
        original = prepared["dir"] / "asdiv-aug" / f"{split}.jsonl"
        assert (tmp_path / f"{split}.jsonl").read_bytes() == original.read_bytes()
    assert (tmp_path / "stats.json").read_bytes() == (
        prepared["dir"] / "asdiv-aug" / "stats.json"
    ).read_bytes()


def test_one_flipped_byte_in_the_mirror_is_caught(tmp_path):
    copy = tmp_path / "mirror"
    shutil.copytree(MIRROR / "aqua", copy / "aqua")
    path = copy / "aqua" / "test.json"
    content = bytearray(path.read_bytes())
    content[100] ^= 0x01
    path.write_bytes(bytes(content))
    out = tmp_path / "test.jsonl"
    with pytest.raises(ChecksumError) as info:
        settings = {"variant": "offline", "aqua_train_subset": {"size": None, "seed": 0}}
        prepare("aqua", "test", settings, RawFiles(load_registry(), mirror=copy), out)
    message = str(info.value)
    assert "test.json" in message
    assert load_registry()["aqua/test.json"].sha256 in message
    assert hashlib.sha256(bytes(content)).hexdigest() in message
    assert not out.exists()
