"""What a job costs: the one place that turns a step's workload into the `runtime` (minutes) and
`mem_mb` its Snakemake rule declares, and a device's free memory into an evaluation batch size.

The figures are per preset (params.yaml `presets.<preset>.resources`), the model sizes come from the
registry's architecture facts (softcot/models/registry.yaml), and the workload from the step:

    evaluation tokens   = rows x max_new_tokens (+ the assistant's hard tokens per example)
                          rows = examples x seeds x samples (of the shard, when sharded)
    training tokens     = epochs x examples x sequence_tokens
    runtime (minutes)   = overhead_min + safety x tokens / tokens_per_s / 60       (x attempt on a retry)
    mem_mb, GPU job     = host_mb + the largest model's weights (they pass through host memory on loading)
    mem_mb, CPU job     = host_mb + every model's weights + one batch's KV cache and working set
                          (training: + the base's activations for the backward pass)
    KV bytes per token  = layers x kv_heads x head_dim x 2 (keys and values) x bytes per value
    auto batch size     = (free device memory - margin x total) / (KV cache of one row + its working set)

Nothing here can change an output: these values travel outside a step's settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from softcot.errors import ConfigError
from softcot.models.registry import Architecture

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MB = 1024 * 1024
CPU_BATCH_SIZE = 32  # `eval.batch_size: auto` off a GPU: the project's long-standing default
AUTO_BATCH_MARGIN = 0.10  # share of the device's memory `auto` leaves free
AUTO_BATCH_CAP = 1024  # beyond this a decode step is compute-bound: a bigger batch gains nothing
LOGIT_COPIES = 4  # float32 logits per row and step: the logits, top-k/sorted values, probabilities, cdf
PREFILL_COPIES = 3  # the MLP's gate, up and activated intermediates of one layer during the prompt pass
TRAIN_ACTIVATIONS = 12  # values saved per token and layer for the backward pass, in hidden units (approx.)


@dataclass(frozen=True)
class Figures:
    """A preset's sizing figures (params.yaml `presets.<preset>.resources`)."""

    eval_tokens_per_s: float  # generated tokens per second of one evaluation job, all rows together
    train_tokens_per_s: float  # training tokens per second (forward and backward through the base)
    sequence_tokens: int  # a base prompt's tokens (evaluation) or a training sequence's (upper estimate)
    expected_new_tokens: int  # tokens a row generates on average before its stop token (budgets only)
    overhead_min: float  # start-up: loading the models and data
    safety: float  # multiplier on the estimated time
    host_mb: int  # host memory besides weights: Python, torch, tokenizers, data

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Figures:
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Model:
    """A model of a job as far as sizing goes: its shape and the dtype its weights load in."""

    arch: Architecture
    dtype: str

    @property
    def bytes_per_value(self) -> int:
        return BYTES[self.dtype]

    @property
    def weight_bytes(self) -> int:
        return self.arch.parameters * self.bytes_per_value

    @property
    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.arch, self.bytes_per_value)


def kv_bytes_per_token(arch: Architecture, bytes_per_value: int) -> int:
    """Keys and values of one token in every layer (full attention: a sliding window would be less)."""
    return arch.layers * arch.kv_heads * arch.head_dim * 2 * bytes_per_value


def row_bytes(arch: Architecture, bytes_per_value: int, prompt_tokens: int, new_tokens: int) -> int:
    """Device memory one generating row needs: its KV cache for the whole decode, its float32
    logits per step (and their sorted/normalized copies), and its share of the prompt pass's MLP."""
    kv = kv_bytes_per_token(arch, bytes_per_value) * (prompt_tokens + new_tokens)
    logits = arch.vocab * 4 * LOGIT_COPIES
    prefill = prompt_tokens * arch.intermediate * bytes_per_value * PREFILL_COPIES
    return kv + logits + prefill


def auto_batch_size(
    arch: Architecture,
    bytes_per_value: int,
    prompt_tokens: int,
    new_tokens: int,
    free_bytes: int,
    total_bytes: int,
    rows: int | None = None,
) -> int:
    """The largest batch whose rows fit the device's free memory (measured with the weights already
    loaded) less a margin of AUTO_BATCH_MARGIN of its total; at least 1, at most AUTO_BATCH_CAP and
    the job's row count."""
    usable = free_bytes - AUTO_BATCH_MARGIN * total_bytes
    per_row = row_bytes(arch, bytes_per_value, prompt_tokens, new_tokens)
    size = max(1, min(AUTO_BATCH_CAP, int(usable // per_row)))
    return size if rows is None else max(1, min(size, rows))


def parse_batch_size(value: int | str) -> int | None:
    """`eval.batch_size` / `--batch-size`: a positive number of rows, or "auto" (None)."""
    if value == "auto":
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise ConfigError(f"batch size must be at least 1, got {size}")
    return size


# --- requests ----------------------------------------------------------------------------------------
def minutes(figures: Figures, tokens: float, tokens_per_s: float) -> int:
    return math.ceil(figures.overhead_min + figures.safety * tokens / tokens_per_s / 60)


def eval_tokens(rows: int, max_new_tokens: int, examples: int = 0, assistant_tokens: int = 0) -> int:
    """Generated tokens of an evaluation at most: every row runs to max_new_tokens, plus the
    assistant's own hard tokens per example (Assist-CoT)."""
    return rows * max_new_tokens + examples * assistant_tokens


def eval_request(
    figures: Figures,
    models: Sequence[Model],
    *,
    rows: int,
    max_new_tokens: int,
    examples: int,
    assistant_tokens: int,
    batch_size: int | None,
    gpus: int,
) -> dict[str, int]:
    """{"minutes", "mem_mb"} of an evaluation job (or shard); models[0] is the base."""
    tokens = eval_tokens(rows, max_new_tokens, examples, assistant_tokens)
    if gpus:
        memory = figures.host_mb * MB + max(model.weight_bytes for model in models)
    else:
        base = models[0]
        batch = min(rows, batch_size or CPU_BATCH_SIZE) if rows else 1
        working = batch * row_bytes(base.arch, base.bytes_per_value, figures.sequence_tokens, max_new_tokens)
        memory = figures.host_mb * MB + sum(model.weight_bytes for model in models) + working
    return {
        "minutes": minutes(figures, tokens, figures.eval_tokens_per_s),
        "mem_mb": math.ceil(memory / MB),
    }


def train_request(
    figures: Figures, models: Sequence[Model], *, examples: int, epochs: int, batch_size: int, gpus: int
) -> dict[str, int]:
    """{"minutes", "mem_mb"} of a training job; models[0] is the base."""
    tokens = epochs * examples * figures.sequence_tokens
    if gpus:
        memory = figures.host_mb * MB + max(model.weight_bytes for model in models)
    else:
        base = models[0]
        per_token = base.arch.layers * base.arch.hidden * TRAIN_ACTIVATIONS * base.bytes_per_value
        activations = batch_size * figures.sequence_tokens * per_token
        memory = figures.host_mb * MB + sum(model.weight_bytes for model in models) + activations
    return {
        "minutes": minutes(figures, tokens, figures.train_tokens_per_s),
        "mem_mb": math.ceil(memory / MB),
    }


# --- Hugging Face configurations of an architecture (random-weight stand-ins) -----------------------
def architecture_of(config: Any) -> Architecture:
    """The architecture facts of a loaded model's Hugging Face config (its text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    return Architecture(
        model_type=str(text.model_type),
        layers=int(text.num_hidden_layers),
        hidden=int(text.hidden_size),
        intermediate=int(text.intermediate_size),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
        vocab=int(text.vocab_size),
        tied=bool(getattr(text, "tie_word_embeddings", False)),
    )


def hf_config(arch: Architecture, **overrides: Any) -> Any:
    """The Hugging Face config of `arch` (its published shape; `overrides` change any field)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config, Qwen3Config

    fields = {
        "num_hidden_layers": arch.layers,
        "hidden_size": arch.hidden,
        "intermediate_size": arch.intermediate,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab,
        "tie_word_embeddings": arch.tied,
        "max_position_embeddings": 8192,
    }
    fields.update(overrides)
    classes = {
        "llama": LlamaConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "gemma3_text": Gemma3TextConfig,
    }
    return classes[arch.model_type](**fields)


def add_threads_argument(parser: Any) -> None:
    """`--threads` of every command that runs torch (a parser or an argument group)."""
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch; 0: every usable CPU (default: OMP_NUM_THREADS)"
    )


def set_torch_threads(requested: int | None) -> None:
    """A job's `--threads`: None keeps torch's default (OMP_NUM_THREADS, which Snakemake sets to the
    job's threads); 0 takes every CPU this process may use, counted inside the job, so a SLURM
    allocation's CPU binding is respected; n > 0 takes n."""
    import os

    import torch

    if requested is None:
        return
    if requested < 0:
        raise ConfigError(f"--threads must be 0 (every usable CPU) or positive, got {requested}")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(requested or usable)
