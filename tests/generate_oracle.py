"""The decode loop as it was before the GPU hygiene pass (issue 15), kept as the oracle that
softcot.generate must reproduce token for token: one uniform drawn per row and step on the host,
finished rows dropped from the batch (and the KV cache copied) at every step where any row stops,
and a host read of the stop flags whenever any row stops."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from softcot.generate import (
    Generation,
    SamplingConfig,
    _check_batch,
    _prefill,
    _seen_tokens,
    apply_repetition_penalty,
    choose_tokens,
)


def draw_uniforms(generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One uniform per row from that row's own generator."""
    return torch.tensor([torch.rand(1, generator=g).item() for g in generators])


@torch.inference_mode()
def oracle_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    row_seeds: Sequence[int],
    config: SamplingConfig,
    stop_ids: Sequence[int],
    pad_id: int,
    inputs_embeds: torch.Tensor | None = None,
) -> list[Generation]:
    _check_batch(input_ids, attention_mask, row_seeds, inputs_embeds)
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    generators = [torch.Generator().manual_seed(seed) for seed in row_seeds]
    stop = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    max_new = config.max_new_tokens

    mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new)], dim=1)
    next_position = attention_mask.sum(dim=1)
    logits, cache = _prefill(model, input_ids, attention_mask, inputs_embeds, prompt_len + max_new)
    penalty = config.repetition_penalty if config.repetition_penalty not in (None, 1.0) else None
    seen = None
    if penalty and config.penalty_scope == "prompt_and_generated":
        seen = _seen_tokens(input_ids, attention_mask, logits.shape[-1])
    elif penalty:
        seen = torch.zeros((batch, logits.shape[-1]), dtype=torch.bool, device=logits.device)

    generated = torch.full((batch, max_new), pad_id, dtype=torch.long, device=device)
    num_tokens = torch.full((batch,), max_new, dtype=torch.long)
    stopped = torch.zeros(batch, dtype=torch.bool)
    active = torch.arange(batch, device=device)
    for step in range(max_new):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, penalty)
        uniforms = None if config.greedy else draw_uniforms(generators)
        tokens = choose_tokens(logits, config, uniforms)
        generated[active, step] = tokens
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)

        hit_stop = torch.isin(tokens, stop)
        done = hit_stop if step < max_new - 1 else torch.ones_like(hit_stop)
        if done.any():
            finished = active[done].cpu()
            num_tokens[finished] = step + 1
            stopped[finished] = hit_stop[done].cpu()
            if done.all():
                break
            keep = (~done).nonzero().squeeze(1)
            active, tokens, next_position, mask = active[keep], tokens[keep], next_position[keep], mask[keep]
            seen = None if seen is None else seen[keep]
            generators = [generators[i] for i in keep.tolist()]
            cache.batch_select_indices(keep)

        out = model(
            input_ids=tokens[:, None],
            attention_mask=mask[:, : prompt_len + step + 1],
            position_ids=next_position[:, None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits, cache = out.logits[:, -1].float(), out.past_key_values
        next_position = next_position + 1

    rows, counts, stops = generated.cpu().tolist(), num_tokens.tolist(), stopped.tolist()
    return [
        Generation(token_ids=row[: count - stop], num_tokens=count, stopped=stop)
        for row, count, stop in zip(rows, counts, stops, strict=True)
    ]
