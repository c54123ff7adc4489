"""Locating thought slots by token id: batched, padding-proof, and loud about anything but one run of N."""

from __future__ import annotations

import pytest
import torch

from softcot.models.load import PlaceholderIds
from softcot.prompts import (
    PlaceholderError,
    PromptRenderer,
    load_prompt_set,
    locate_assistant_slots,
    locate_base_slots,
)
from softcot.thoughts import right_pad

IDS = PlaceholderIds(unk=0, bot=8, eot=9)
PAD = 0  # the pad id equals the UNK id, as with Qwen: only the attention mask tells them apart


def base_row(prefix: list[int], n: int, suffix: list[int]) -> list[int]:
    return prefix + [IDS.bot] + [IDS.unk] * n + [IDS.eot] + suffix


def test_base_slots_in_a_right_padded_batch():
    rows = [base_row([5, 6, 7], 3, [2, 3]), base_row([5], 3, [2, 3, 4, 4, 4, 4]), base_row([5, 6], 3, [])]
    ids, mask = right_pad(rows, PAD)
    assert ids.shape == (3, 12) and int(mask[2].sum()) == 7  # padded with id 0 = UNK
    starts = locate_base_slots(ids, mask, IDS, 3, ["a", "b", "c"])
    assert starts.tolist() == [4, 2, 3]


def test_left_padding_works_too():
    ids = torch.tensor([[PAD, PAD, 5, IDS.bot, 0, 0, IDS.eot, 2], [5, 6, 7, IDS.bot, 0, 0, IDS.eot, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    assert locate_base_slots(ids, mask, IDS, 2, ["a", "b"]).tolist() == [4, 4]


def test_assistant_slots():
    rows = [[5, 6, 7, 0, 0, 0, 0, 2], [5, 0, 0, 0, 0]]
    ids, mask = right_pad(rows, PAD)
    assert locate_assistant_slots(ids, mask, IDS, 4, ["a", "b"]).tolist() == [3, 1]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([5, IDS.bot, IDS.eot, 2], r"example 'bad': expected one run of 2 UNK tokens \(id 0\), found 0 run"),
        (base_row([5, 0], 2, [2]), r"example 'bad': .*found 2 run\(s\): 1 at 1, 2 at 3"),
        (base_row([5], 3, [2]), r"example 'bad': .*found 1 run\(s\): 3 at 2"),
        (
            [5, IDS.bot, 0, 0, 2, IDS.eot],
            r"example 'bad': expected EOT \(id 9\) once, at position 4; found it at \[5\]",
        ),
        ([5, 0, 0, IDS.eot], r"example 'bad': expected BOT \(id 8\) once, at position 0"),
        ([IDS.eot] + base_row([5], 2, []), r"example 'bad': expected EOT .* found it at \[0, 5\]"),
    ],
)
def test_base_slot_errors_name_the_example(row, message):
    good = base_row([5, 6], 2, [2])
    ids, mask = right_pad([good, row], PAD)
    with pytest.raises(PlaceholderError, match=message) as info:
        locate_base_slots(ids, mask, IDS, 2, ["good", "bad"])
    assert "'good'" not in str(info.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([5, 6, 2], "found 0 run"),
        ([5, 0, 0, 6, 0, 0], "found 2 run"),
        ([5, 0, 0, 0], "found 1 run.*3 at 1"),
        ([5, IDS.bot, 0, 0], r"BOT \(id 8\) must not occur, found it at \[1\]"),
    ],
)
def test_assistant_slot_errors_name_the_example(row, message):
    ids, mask = right_pad([row], PAD)
    with pytest.raises(PlaceholderError, match=f"assistant prompt: example 'q-7': .*{message}"):
        locate_assistant_slots(ids, mask, IDS, 2, ["q-7"])


def test_markers_may_be_absent_only_when_asked():
    ids, mask = right_pad([[5, 0, 0, 2]], PAD)
    assert locate_base_slots(ids, mask, IDS, 2, ["a"], with_markers=False).tolist() == [1]
    ids, mask = right_pad([base_row([5], 2, [])], PAD)
    with pytest.raises(PlaceholderError, match="BOT .* must not occur"):
        locate_base_slots(ids, mask, IDS, 2, ["a"], with_markers=False)


def test_a_placeholder_in_the_question_is_caught(tiny_base, gsm8k_examples):
    """A question that contains the UNK token string yields a second run, not a silent misplacement."""
    renderer = PromptRenderer(load_prompt_set("paper"), tiny_base, "{letter}){text}")
    record = dict(gsm8k_examples[0], question="What is <|endoftext|>?")
    ids, mask = right_pad([renderer.base_ids(record, 4)], tiny_base.pad_id)
    with pytest.raises(PlaceholderError, match="gsm8k-train-0.*found 2 run"):
        locate_base_slots(ids, mask, tiny_base.placeholder_ids, 4, [record["id"]])


@pytest.mark.parametrize("dataset", ["gsm8k", "aqua", "date", "strategyqa"])
@pytest.mark.parametrize("n", [1, 4, 32])
def test_agrees_with_the_reference_offset_formulas(tiny_base, gsm8k_examples, dataset, n):
    """protocol §4 offsets as an oracle: with a ChatML template (q = 1) and BOT/EOT (e = 1),
    base start = P - 1 - N - e - q for math/DU and P - 16 - N - e - q for StrategyQA,
    assistant start = A - 1 - N - q; every start is the first UNK (one after BOT)."""
    renderer = PromptRenderer(load_prompt_set("paper"), tiny_base, "{letter}){text}")
    tokenizer = tiny_base.tokenizer
    records = [dict(r, dataset=dataset, id=f"{dataset}-{i}") for i, r in enumerate(gsm8k_examples)]
    base = [renderer.base_ids(r, n) for r in records]
    assistant = [renderer.assistant_ids(r, n) for r in records]
    e, q = 1, 1
    closing = len(
        tokenizer("\n\nTherefore, the final answer is `Yes` or `No`?", add_special_tokens=False)["input_ids"]
    )
    # The reference's magic 16 = closing sentence + end-of-turn token, for Llama's tokenizer (§4).
    back = 1 if dataset != "strategyqa" else closing + 1
    expected_base = [len(b) - back - n - e - q for b in base]
    expected_assistant = [len(a) - 1 - n - q for a in assistant]
    ids, mask = right_pad(base, tiny_base.pad_id)
    assert (
        locate_base_slots(ids, mask, tiny_base.placeholder_ids, n, [r["id"] for r in records]).tolist()
        == expected_base
    )
    ids, mask = right_pad(assistant, tiny_base.pad_id)
    starts = locate_assistant_slots(ids, mask, tiny_base.placeholder_ids, n, [r["id"] for r in records])
    assert starts.tolist() == expected_assistant
