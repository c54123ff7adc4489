"""Greedy decoding with a repetition penalty against Hugging Face `generate` on tiny random models.

The reference calls `model.generate(inputs_embeds=...)` without `input_ids`, so HF penalizes only
the tokens it generates; given `input_ids` it penalizes the prompt's tokens too. Our two
`penalty_scope` values must reproduce those two calls token for token, with and without thoughts
spliced into the prompt's embeddings.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from softcot.generate import Generation, SamplingConfig, generate, left_pad, row_seed
from softcot.thoughts import base_embeddings, splice_thoughts

VOCAB = 300
PAD = 0
STOP = 2
SLOT = 3  # the placeholder id whose embeddings thoughts replace
PENALTY = 1.8
MAX_NEW = 16
# (tokens before the slot, tokens after it): lengths differ so rows get different padding.
PROMPT_SHAPES = [(4, 3), (9, 5), (2, 2)]

SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    # Wider than HF's 0.02 so the logits are spread out and greedy choices are not near-ties.
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=STOP,
    pad_token_id=PAD,
)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request) -> torch.nn.Module:
    config_class, model_class = FAMILIES[request.param]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return model_class(config_class(**SIZES)).eval()


def prompts(n: int, seed: int = 1) -> tuple[list[list[int]], list[int]]:
    """Random prompts with an n-token slot of SLOT ids, and each slot's offset in its prompt."""
    generator = torch.Generator().manual_seed(seed)
    sequences, offsets = [], []
    for before, after in PROMPT_SHAPES:
        words = torch.randint(4, VOCAB, (before + after,), generator=generator).tolist()
        sequences.append(words[:before] + [SLOT] * n + words[before:])
        offsets.append(before)
    return sequences, offsets


def spliced_inputs(model, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask, and their embeddings with random "thoughts" over the N slots."""
    sequences, offsets = prompts(n)
    ids, mask = left_pad(sequences, PAD)
    with torch.no_grad():
        embeds = base_embeddings(model, ids)
        if n:
            starts = torch.tensor(
                [ids.shape[1] - len(s) + o for s, o in zip(sequences, offsets, strict=True)]
            )
            generator = torch.Generator().manual_seed(2)
            thoughts = torch.randn((len(sequences), n, embeds.shape[-1]), generator=generator)
            embeds = splice_thoughts(embeds, starts, thoughts)
    return ids, mask, embeds


def ours(model, ids, mask, penalty, scope, embeds=None, greedy=True) -> list[Generation]:
    config = SamplingConfig(
        greedy=greedy, repetition_penalty=penalty, penalty_scope=scope, max_new_tokens=MAX_NEW
    )
    seeds = [row_seed(41, f"ex-{i}") for i in range(len(ids))]
    return generate(model, ids, mask, seeds, config, [STOP], PAD, inputs_embeds=embeds)


def hf(model, ids, mask, penalty, embeds=None) -> list[Generation]:
    """HF greedy decoding of each row alone, as the reference decodes (batch size 1, no padding),
    cut at the first stop token the way `Generation` counts it. Given `embeds`, HF sees only
    `inputs_embeds` (the reference's call); otherwise only `input_ids`.

    One row at a time also because HF 5.x, given `inputs_embeds` and a left-padded mask, skips
    each row's first pad-length *generated* tokens in the penalty (its `prompt_ignore_length`
    assumes the ids start with the padded prompt)."""
    rows = []
    for row in range(len(ids)):
        keep = mask[row].bool()
        prompt = (
            {"inputs_embeds": embeds[row : row + 1, keep]}
            if embeds is not None
            else {"input_ids": ids[row : row + 1, keep]}
        )
        with torch.no_grad():
            out = model.generate(
                **prompt,
                attention_mask=mask[row : row + 1, keep],
                do_sample=False,
                repetition_penalty=penalty,
                max_new_tokens=MAX_NEW,
                eos_token_id=STOP,
                pad_token_id=PAD,
            )
        tokens = out[0, int(keep.sum()) if embeds is None else 0 :].tolist()  # ids come back with the prompt
        if STOP in tokens:
            end = tokens.index(STOP)
            rows.append(Generation(tokens[:end], end + 1, True))
        else:
            assert len(tokens) == MAX_NEW
            rows.append(Generation(tokens, MAX_NEW, False))
    return rows


@pytest.mark.parametrize("n", [0, 3])
def test_generated_scope_matches_hf_given_inputs_embeds(model, n):
    ids, mask, embeds = spliced_inputs(model, n)
    expected = hf(model, ids, mask, PENALTY, embeds)
    assert ours(model, ids, mask, PENALTY, "generated", embeds) == expected
    if n == 0:  # the prompt's own embeddings: passing ids instead changes nothing
        assert ours(model, ids, mask, PENALTY, "generated") == expected
    # The check has teeth: the penalty changes what HF generates on these prompts.
    assert expected != hf(model, ids, mask, 1.0, embeds)


def test_prompt_and_generated_scope_matches_hf_given_input_ids(model):
    ids, mask, _ = spliced_inputs(model, 0)
    expected = hf(model, ids, mask, PENALTY)
    assert ours(model, ids, mask, PENALTY, "prompt_and_generated") == expected
    assert expected != hf(model, ids, mask, PENALTY, base_embeddings(model, ids).detach())


def test_prompt_scope_penalizes_a_slot_id_the_model_would_generate(model):
    """The slot's ids never reach the model (thoughts replace their embeddings), so giving them
    the token each row would generate first changes the output only if the prompt is penalized."""
    ids, mask, embeds = spliced_inputs(model, 3)
    plain = ours(model, ids, mask, PENALTY, "generated", embeds)
    first = torch.tensor([g.token_ids[0] for g in plain])
    relabelled = torch.where(ids == SLOT, first[:, None], ids)

    assert ours(model, relabelled, mask, PENALTY, "generated", embeds) == plain
    penalized = ours(model, relabelled, mask, PENALTY, "prompt_and_generated", embeds)
    assert all(p.token_ids[0] != g.token_ids[0] for p, g in zip(penalized, plain, strict=True))
    prompts_seen = [row[keep].tolist() for row, keep in zip(relabelled, mask.bool(), strict=True)]
    assert all(p.token_ids[0] not in seen for p, seen in zip(penalized, prompts_seen, strict=True))


@pytest.mark.parametrize("penalty", [None, 1.0])
@pytest.mark.parametrize("greedy", [True, False])
def test_scopes_agree_without_a_penalty(model, penalty, greedy):
    ids, mask, embeds = spliced_inputs(model, 3)
    generated = ours(model, ids, mask, penalty, "generated", embeds, greedy)
    assert ours(model, ids, mask, penalty, "prompt_and_generated", embeds, greedy) == generated
    if greedy:
        assert generated == hf(model, ids, mask, 1.0, embeds)


class _CraftedLogits(torch.nn.Module):
    """A model whose logits are bf16 and chosen by hand: token FIRST wins the first step; after
    that FIRST has ROUNDING and token TIE (a lower id) has 2.0, everything else far below."""

    FIRST, TIE = 5, 4
    # 231/64 is a bf16 number; 231/64 / 1.8 = 2.0052 in float32, but it rounds to 2.0 in bf16.
    ROUNDING = 231 / 64

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, 0

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        logits = torch.full_like(out.logits, -10.0, dtype=torch.bfloat16)
        if self.calls == 0:
            logits[..., self.FIRST] = 4.0
        else:
            logits[..., self.FIRST], logits[..., self.TIE] = self.ROUNDING, 2.0
        self.calls += 1
        out.logits = logits
        return out


def test_penalty_acts_on_float32_logits_as_hf_does(model):
    """HF casts a bf16 model's logits to float32 before its logits processors. Penalized in
    bf16, FIRST's 2.0052 would round to a tie with TIE's 2.0 and argmax would pick TIE."""
    crafted = _CraftedLogits(model)
    ids, mask, _ = spliced_inputs(model, 0)
    ids, mask = ids[:1], mask[:1]
    config = SamplingConfig(greedy=True, repetition_penalty=PENALTY, max_new_tokens=2)
    (result,) = generate(crafted, ids, mask, [0], config, [STOP], PAD)
    assert result.token_ids == [crafted.FIRST, crafted.FIRST]

    # HF's own processor on the same numbers, and the bf16 arithmetic it avoids.
    second = torch.full((1, VOCAB), -10.0, dtype=torch.bfloat16)
    second[0, crafted.FIRST], second[0, crafted.TIE] = crafted.ROUNDING, 2.0
    processor = RepetitionPenaltyLogitsProcessor(PENALTY)
    assert int(processor(torch.tensor([[crafted.FIRST]]), second.float()).argmax()) == crafted.FIRST
    assert int(processor(torch.tensor([[crafted.FIRST]]), second.clone()).argmax()) == crafted.TIE
