"""Behaviour of the batched, seeded sampling engine on a tiny random Llama."""

from __future__ import annotations

import os
import subprocess
import sys

import generate_oracle
import pytest
import torch
from generate_oracle import oracle_generate
from torch.overrides import TorchFunctionMode
from transformers import LlamaConfig, LlamaForCausalLM

import softcot.generate
from softcot.errors import ConfigError
from softcot.generate import (
    Generation,
    SamplingConfig,
    _uniform_table,
    apply_repetition_penalty,
    choose_tokens,
    generate,
    left_pad,
    row_seed,
)

VOCAB = 100
PAD = 0
STOP = 99
PROMPTS = {
    "short": [5, 6, 7],
    "medium": [10, 11, 12, 13, 14, 15, 16],
    "long": list(range(20, 45)),
    "other": [50, 51, 52, 53, 54],
}
SAMPLING = SamplingConfig(max_new_tokens=12)
CONFIGS = {
    "full-vocab": SAMPLING,
    "top-k-top-p": SamplingConfig(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=12),
    "penalty": SamplingConfig(top_k=30, repetition_penalty=1.3, max_new_tokens=12),
    "penalty-prompt": SamplingConfig(
        top_k=30, repetition_penalty=1.3, max_new_tokens=12, penalty_scope="prompt_and_generated"
    ),
}


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def run(model, names, seeds, config, stop_ids=(STOP,), pad_id=PAD, **kwargs) -> list[Generation]:
    input_ids, attention_mask = left_pad([PROMPTS[n] for n in names], pad_id)
    return generate(model, input_ids, attention_mask, seeds, config, list(stop_ids), pad_id, **kwargs)


def no_cache_greedy(model, prompt: list[int], max_new: int, stop_ids=(STOP,)) -> list[int]:
    """Independent oracle: full forward over the whole sequence at every step, no cache, no padding."""
    sequence, new = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([sequence])).logits[0, -1].argmax())
            new.append(token)
            sequence.append(token)
            if token in stop_ids:
                break
    return new


# --- seeds --------------------------------------------------------------------------------


def test_row_seed_is_deterministic_distinct_and_in_range():
    seeds = {row_seed(s, ex, k) for s in (41, 42) for ex in ("gsm8k-0", "gsm8k-1") for k in (0, 1)}
    assert len(seeds) == 8
    assert all(0 <= s < 2**63 for s in seeds)
    assert row_seed(41, "gsm8k-0", 0) == row_seed(41, "gsm8k-0")


def test_row_seed_does_not_depend_on_python_hash_randomization():
    code = "from softcot.generate import row_seed; print(row_seed(41, 'gsm8k-7', 3))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(row_seed(41, "gsm8k-7", 3))


# --- configuration ------------------------------------------------------------------------


def test_sampling_config_takes_model_defaults_only_for_null_settings():
    settings = {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": None,
        "repetition_penalty": None,
        "max_new_tokens": 64,
        "greedy": False,
        "penalty_scope": "generated",
    }
    defaults = {"top_k": 20, "repetition_penalty": 1.05}
    config = SamplingConfig.from_settings(settings, defaults)
    assert (config.top_k, config.repetition_penalty, config.max_new_tokens) == (20, 1.05, 64)
    assert config.penalty_scope == "generated"

    explicit = SamplingConfig.from_settings({**settings, "top_k": 50, "repetition_penalty": 1.2}, defaults)
    assert (explicit.top_k, explicit.repetition_penalty) == (50, 1.2)

    no_defaults = SamplingConfig.from_settings(settings, {})
    assert (no_defaults.top_k, no_defaults.repetition_penalty) == (None, None)

    scoped = SamplingConfig.from_settings({**settings, "penalty_scope": "prompt_and_generated"}, defaults)
    assert scoped.penalty_scope == "prompt_and_generated"
    del settings["penalty_scope"]  # params.yaml always sets it: no silent default here
    with pytest.raises(KeyError, match="penalty_scope"):
        SamplingConfig.from_settings(settings, defaults)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("repetition_penalty", 0.0),
        ("max_new_tokens", 0),
        ("penalty_scope", "prompt"),
    ],
)
def test_sampling_config_rejects_invalid_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingConfig(**{field: value})


def test_left_pad_pads_on_the_left_with_a_matching_mask():
    input_ids, attention_mask = left_pad([[1, 2, 3], [4]], pad_id=9)
    assert input_ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError):
        left_pad([[1], []], pad_id=9)


def test_generate_rejects_right_padding_and_a_wrong_number_of_seeds(model):
    input_ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    with pytest.raises(ValueError, match="left padded"):
        generate(model, input_ids, (input_ids != 0).long(), [1, 2], SAMPLING, [STOP], PAD)
    input_ids, attention_mask = left_pad([[1, 2], [3]], PAD)
    with pytest.raises(ValueError, match="seeds"):
        generate(model, input_ids, attention_mask, [1], SAMPLING, [STOP], PAD)


# --- sampling invariance ------------------------------------------------------------------


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_a_row_samples_the_same_tokens_whatever_its_batch(model, config_name):
    config = CONFIGS[config_name]
    rows = [("short", 101), ("medium", 202), ("short", 303)]
    alone = [run(model, [name], [seed], config)[0] for name, seed in rows]

    together = run(model, [n for n, _ in rows], [s for _, s in rows], config)
    assert together == alone

    reordered = run(model, [n for n, _ in rows[::-1]], [s for _, s in rows[::-1]], config)
    assert reordered == alone[::-1]

    # A bigger batch: other prompts, a longer one that changes every row's padding, repeated rows.
    names = ["long", "short", "other", "medium", "short", "short"]
    seeds = [7, 101, 8, 202, 303, 101]
    bigger = run(model, names, seeds, config)
    assert [bigger[1], bigger[3], bigger[4]] == alone
    assert bigger[5] == bigger[1]


def test_same_seed_repeats_and_different_seeds_differ(model):
    first = run(model, ["medium"] * 4, [1, 1, 2, 3], SAMPLING)
    again = run(model, ["medium"] * 4, [1, 1, 2, 3], SAMPLING)
    assert first == again
    assert first[0] == first[1]
    assert len({tuple(g.token_ids) for g in first[1:]}) == 3


def test_repetition_penalty_ignores_padding(model):
    """Padding is not part of the prompt: with pad = the token the short row would pick first,
    a padded row still samples what it samples alone, even when the prompt is penalized."""
    penalty = SamplingConfig(
        greedy=True, repetition_penalty=5.0, max_new_tokens=6, penalty_scope="prompt_and_generated"
    )
    pad_id = run(model, ["short"], [0], penalty)[0].token_ids[0]
    alone = run(model, ["short"], [0], penalty, pad_id=pad_id)[0]
    padded = run(model, ["long", "short"], [0, 0], penalty, pad_id=pad_id)[1]
    assert padded == alone


# --- greedy and the KV cache --------------------------------------------------------------


def test_greedy_with_cache_and_padding_equals_no_cache_argmax(model):
    names = ["short", "long", "medium", "other"]
    greedy = SamplingConfig(greedy=True, max_new_tokens=10)
    results = run(model, names, [0, 1, 2, 3], greedy)
    for name, result in zip(names, results, strict=True):
        expected = no_cache_greedy(model, PROMPTS[name], 10)
        stopped = expected[-1] == STOP
        assert result == Generation(expected[:-1] if stopped else expected, len(expected), stopped)


def test_top_k_one_samples_the_argmax_whatever_the_seed(model):
    greedy = run(model, ["short", "medium"], [0, 0], SamplingConfig(greedy=True, max_new_tokens=10))
    for seeds in ([1, 2], [3, 4]):
        assert run(model, ["short", "medium"], seeds, SamplingConfig(top_k=1, max_new_tokens=10)) == greedy


def test_inputs_embeds_override_replaces_the_prompt_embeddings(model):
    input_ids, attention_mask = left_pad([PROMPTS["short"], PROMPTS["medium"]], PAD)
    embed = model.get_input_embeddings()
    own = generate(
        model, input_ids, attention_mask, [4, 5], SAMPLING, [STOP], PAD, inputs_embeds=embed(input_ids)
    )
    assert own == generate(model, input_ids, attention_mask, [4, 5], SAMPLING, [STOP], PAD)

    # Embeddings of other tokens: the model continues those tokens, not the ids it was given.
    other_ids, _ = left_pad([[60, 61, 62], PROMPTS["medium"]], PAD)
    swapped = generate(
        model, input_ids, attention_mask, [4, 5], SAMPLING, [STOP], PAD, inputs_embeds=embed(other_ids)
    )
    assert swapped[0] == generate(model, other_ids, attention_mask, [4, 5], SAMPLING, [STOP], PAD)[0]
    assert swapped[0] != own[0]
    assert swapped[1] == own[1]


def test_rows_with_equal_ids_but_different_embeddings_are_not_merged(model):
    input_ids, attention_mask = left_pad([PROMPTS["short"], PROMPTS["short"]], PAD)
    embeds = model.get_input_embeddings()(input_ids)
    embeds[1, 1] += 1.0
    greedy = SamplingConfig(greedy=True, max_new_tokens=8)
    both = generate(model, input_ids, attention_mask, [0, 0], greedy, [STOP], PAD, inputs_embeds=embeds)
    alone = [
        generate(
            model,
            input_ids[i : i + 1],
            attention_mask[i : i + 1],
            [0],
            greedy,
            [STOP],
            PAD,
            inputs_embeds=embeds[i : i + 1],
        )[0]
        for i in range(2)
    ]
    assert both == alone
    assert alone[0] != alone[1]


# --- stopping and counting ----------------------------------------------------------------


def test_stop_token_ends_a_row_and_counts_it_while_others_run_on(model):
    greedy = SamplingConfig(greedy=True, max_new_tokens=10)
    free = {name: no_cache_greedy(model, PROMPTS[name], 10, stop_ids=()) for name in ("long", "medium")}
    stop = free["long"][3]
    assert stop not in free["medium"]  # the chosen token stops one row only
    progress = _Counter()
    long_row, medium_row = run(model, ["long", "medium"], [0, 0], greedy, stop_ids=[stop], progress=progress)

    first_stop = free["long"].index(stop)
    assert long_row == Generation(free["long"][:first_stop], first_stop + 1, True)
    assert medium_row == Generation(free["medium"], 10, False)
    assert progress.total == 2


def test_several_stop_ids_and_early_exit_when_every_row_stops(model):
    greedy = SamplingConfig(greedy=True, max_new_tokens=50)
    free = {name: no_cache_greedy(model, PROMPTS[name], 3, stop_ids=()) for name in ("short", "other")}
    stops = [free["short"][2], free["other"][1]]
    rows = run(model, ["short", "other"], [0, 0], greedy, stop_ids=stops)
    assert all(row.stopped for row in rows)
    assert all(row.num_tokens <= 3 for row in rows)
    assert all(
        row.token_ids == free[name][: row.num_tokens - 1]
        for name, row in zip(["short", "other"], rows, strict=True)
    )


# --- the sampler on hand-made distributions -----------------------------------------------


def sampled_distribution(probs: list[float], config: SamplingConfig, draws: int = 2000) -> dict[int, float]:
    """Frequencies from evenly spaced uniforms: exactly the sampler's distribution, quantized."""
    logits = torch.tensor([probs]).log().repeat(draws, 1)
    uniforms = (torch.arange(draws) + 0.5) / draws
    tokens = choose_tokens(logits, config, uniforms).tolist()
    return {t: tokens.count(t) / draws for t in sorted(set(tokens))}


# Token 2 is the most likely; order in the vocabulary is deliberately not the order by probability.
HAND_MADE = [0.15, 0.05, 0.5, 0.3]


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (1.0, {0: 0.15, 1: 0.05, 2: 0.5, 3: 0.3}),
        (0.95, {0: 0.15 / 0.95, 2: 0.5 / 0.95, 3: 0.3 / 0.95}),  # 0.5 + 0.3 + 0.15 reaches 0.95
        (0.75, {2: 0.5 / 0.8, 3: 0.3 / 0.8}),  # smallest set reaching 0.75 is {0.5, 0.3}
        (0.5, {2: 1.0}),  # 0.5 alone reaches 0.5
        (0.01, {2: 1.0}),  # at least one token is always kept
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expected):
    observed = sampled_distribution(HAND_MADE, SamplingConfig(top_p=top_p))
    assert observed.keys() == expected.keys()
    for token, probability in expected.items():
        assert observed[token] == pytest.approx(probability, abs=2e-3)


def test_top_k_and_temperature_reshape_the_distribution():
    top2 = sampled_distribution(HAND_MADE, SamplingConfig(top_k=2))
    assert top2 == pytest.approx({2: 0.5 / 0.8, 3: 0.3 / 0.8}, abs=2e-3)

    cold = sampled_distribution(HAND_MADE, SamplingConfig(temperature=0.5))
    squared = {i: p**2 / sum(q**2 for q in HAND_MADE) for i, p in enumerate(HAND_MADE)}
    assert cold == pytest.approx(squared, abs=2e-3)


def test_a_token_of_probability_zero_is_never_drawn_even_at_the_edges():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).repeat(3, 1)
    uniforms = torch.tensor([0.0, 0.5, 1.0 - 2**-24])
    assert set(choose_tokens(logits, SAMPLING, uniforms).tolist()) <= {0, 2}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_repetition_penalty_steers_generation_away_from_seen_tokens(model):
    def greedy(penalty, scope="prompt_and_generated"):
        config = SamplingConfig(
            greedy=True, repetition_penalty=penalty, max_new_tokens=20, penalty_scope=scope
        )
        return run(model, ["medium"], [0], config, stop_ids=())[0].token_ids

    plain = PROMPTS["medium"] + greedy(None)
    assert len(set(plain)) < len(plain)  # this random model repeats prompt or generated tokens
    penalized = PROMPTS["medium"] + greedy(100.0)
    assert len(set(penalized)) == len(penalized)
    generated_only = greedy(100.0, "generated")  # the default scope: no repeats among new tokens
    assert len(set(generated_only)) == len(generated_only)


# --- the decode loop against the loop it replaced (tests/generate_oracle.py) -------------------

MANY_STOPS = (3, 17, 42, 61, 77, 99)  # frequent enough that rows stop at many different steps


def stop_staggered_batch(n_rows: int = 12) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    names = list(PROMPTS) * 3
    ids, mask = left_pad([PROMPTS[name] for name in names[:n_rows]], PAD)
    return ids, mask, [1000 + 7 * row for row in range(n_rows)]


@pytest.mark.parametrize("config_name", [*CONFIGS, "greedy"])
def test_the_decode_loop_gives_the_oracles_tokens(model, config_name):
    config = CONFIGS.get(config_name, SamplingConfig(greedy=True, max_new_tokens=12))
    config = SamplingConfig(**{**config.__dict__, "max_new_tokens": 30})
    ids, mask, seeds = stop_staggered_batch()
    ours = generate(model, ids, mask, seeds, config, MANY_STOPS, PAD)
    assert ours == oracle_generate(model, ids, mask, seeds, config, MANY_STOPS, PAD)
    if not config.greedy:
        assert len({row.num_tokens for row in ours}) > 3  # rows stopped at many different steps
    embeds = model.get_input_embeddings()(ids) * 1.5
    with_embeds = generate(model, ids, mask, seeds, config, MANY_STOPS, PAD, inputs_embeds=embeds)
    assert with_embeds == oracle_generate(
        model, ids, mask, seeds, config, MANY_STOPS, PAD, inputs_embeds=embeds
    )


def test_the_uniform_table_is_one_draw_per_step_from_each_rows_generator():
    seeds = [row_seed(41, "gsm8k-test-00001"), 7, 2**62 + 5]
    table = _uniform_table(seeds, 40)
    for seed, row in zip(seeds, table, strict=True):
        generator = torch.Generator().manual_seed(seed)
        assert row.tolist() == [torch.rand(1, generator=generator).item() for _ in range(40)]


class _HostReads(TorchFunctionMode):
    """Counts reads of tensor values by the host made from softcot.generate's `generate` itself."""

    READS = {torch.Tensor.cpu, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__}

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source, self.reads = source, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        caller = sys._getframe(1).f_code
        if func in self.READS and caller.co_filename == self.source and caller.co_name.endswith("generate"):
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_a_decode_step_reads_the_device_once(model):
    """One read of the finished flags per step (and the results at the end), however many rows
    stop; the old loop read the device again at every step where a row stopped."""
    ids, mask, seeds = stop_staggered_batch()
    config = SamplingConfig(top_k=30, repetition_penalty=1.3, max_new_tokens=30)
    steps = []
    hook = model.register_forward_hook(lambda *_: steps.append(1))
    try:
        with _HostReads(softcot.generate.__file__) as ours:
            rows = generate(model, ids, mask, seeds, config, MANY_STOPS, PAD)
        decode_steps = len(steps) - 1  # the first forward is the prompt's
        with _HostReads(generate_oracle.__file__) as old:
            oracle_generate(model, ids, mask, seeds, config, MANY_STOPS, PAD)
    finally:
        hook.remove()
    loop_steps = max(row.num_tokens for row in rows)  # the last step ends the loop without a forward
    assert loop_steps == decode_steps + 1
    assert ours.reads <= loop_steps + 6  # + each result tensor's .cpu() and .tolist()
    assert old.reads > ours.reads


class _Counter:
    def __init__(self) -> None:
        self.total = 0

    def update(self, n: int) -> None:
        self.total += n
