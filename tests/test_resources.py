"""Sizing jobs from their workload (softcot/resources.py) and the registry's architecture facts."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from softcot.errors import ConfigError
from softcot.models.registry import architecture, model_names
from softcot.resources import (
    AUTO_BATCH_CAP,
    AUTO_BATCH_MARGIN,
    Figures,
    Model,
    architecture_of,
    auto_batch_size,
    eval_request,
    hf_config,
    kv_bytes_per_token,
    parse_batch_size,
    row_bytes,
    train_request,
)

GIB = 2**30
FIGURES = Figures(
    eval_tokens_per_s=1000,
    train_tokens_per_s=2000,
    sequence_tokens=500,
    expected_new_tokens=300,
    overhead_min=10,
    safety=1.5,
    host_mb=8000,
)


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_has_architecture_facts_that_build_it(name):
    """The parameter count of the facts equals that of the Hugging Face model they configure
    (built on the meta device: no weights), so the facts are a model's real shape."""
    arch = architecture(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(arch))
    assert sum(p.numel() for p in model.parameters()) == arch.parameters
    assert architecture_of(model.config) == arch


def test_published_sizes():
    assert round(architecture("llama-3.1-8b-instruct").parameters / 1e9, 2) == 8.03
    assert round(architecture("qwen2.5-7b-instruct").parameters / 1e9, 2) == 7.62
    assert round(architecture("llama-3.2-1b-instruct").parameters / 1e9, 2) == 1.24
    # Llama-3.1-8B in bf16: 32 layers x 8 KV heads x 128 x (K, V) x 2 bytes = 128 KiB per token.
    assert kv_bytes_per_token(architecture("llama-3.1-8b-instruct"), 2) == 128 * 1024


def test_auto_batch_size_is_the_largest_that_fits_with_the_margin():
    arch = architecture("llama-3.1-8b-instruct")
    total, free = 80 * GIB, 62 * GIB  # an 80 GB card holding both models of the pair
    size = auto_batch_size(arch, 2, 400, 1024, free, total)
    per_row = row_bytes(arch, 2, 400, 1024)
    usable = free - AUTO_BATCH_MARGIN * total
    assert size * per_row <= usable < (size + 1) * per_row
    assert 50 < size < 400
    assert auto_batch_size(arch, 2, 400, 1024, 2 * free, total) > size  # more memory, bigger batch
    assert auto_batch_size(arch, 2, 400, 2048, free, total) < size  # longer rows, smaller batch
    assert auto_batch_size(arch, 2, 400, 1024, free, total, rows=20) == 20  # never beyond the job's rows
    assert auto_batch_size(arch, 2, 400, 1024, GIB, total) == 1  # at least one row
    assert (
        auto_batch_size(architecture("smollm2-135m-instruct"), 2, 10, 10, 1000 * GIB, total) == AUTO_BATCH_CAP
    )


def test_batch_size_is_a_positive_number_or_auto():
    assert parse_batch_size("auto") is None
    assert parse_batch_size(16) == parse_batch_size("16") == 16
    for bad in (0, "-3", "big"):
        with pytest.raises(ConfigError, match="batch size"):
            parse_batch_size(bad)


def test_requests_follow_the_formula():
    base = Model(architecture("llama-3.1-8b-instruct"), "bfloat16")
    assistant = Model(architecture("llama-3.2-1b-instruct"), "bfloat16")
    request = eval_request(
        FIGURES,
        [base, assistant],
        rows=1000,
        max_new_tokens=1024,
        examples=200,
        assistant_tokens=0,
        batch_size=None,
        gpus=1,
    )
    # 10 + 1.5 x 1000 x 1024 / 1000 / 60 = 35.6 -> 36 minutes; host: 8000 MB + the 8B's weights.
    assert request["minutes"] == 36
    assert request["mem_mb"] == 8000 + -(-base.weight_bytes // 2**20)
    doubled = eval_request(
        FIGURES,
        [base],
        rows=2000,
        max_new_tokens=1024,
        examples=400,
        assistant_tokens=0,
        batch_size=None,
        gpus=1,
    )
    assert doubled["minutes"] > request["minutes"]
    train = train_request(FIGURES, [base, assistant], examples=1000, epochs=10, batch_size=4, gpus=1)
    assert train["minutes"] == 73  # 10 + 1.5 x 10 epochs x 1000 examples x 500 tokens / 2000 / 60 = 72.5
    cpu = eval_request(
        FIGURES, [base], rows=10, max_new_tokens=32, examples=2, assistant_tokens=0, batch_size=None, gpus=0
    )
    assert cpu["mem_mb"] > 8000 + base.weight_bytes // 2**20  # weights and a batch's cache in host memory


def test_threads_zero_takes_every_usable_cpu_and_none_keeps_torchs_default():
    import os

    from softcot.resources import set_torch_threads

    before = torch.get_num_threads()
    try:
        set_torch_threads(None)
        assert torch.get_num_threads() == before
        set_torch_threads(0)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="--threads must be 0"):
            set_torch_threads(-2)
    finally:
        torch.set_num_threads(before)
