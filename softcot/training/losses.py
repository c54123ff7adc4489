"""Next-token losses shared by the trainers, computed where they are cheap.

With a 128k- or 262k-token vocabulary the LM head over every position is most of a training step,
so it runs on the supervised positions alone; the prompt before the thoughts does not depend on
what is trained, so it can run without autograd (`frozen`). Neither changes the loss (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100  # a label that is not supervised


def supervised_tokens(labels: torch.Tensor) -> int:
    """Next-token targets a batch supervises (the first position predicts nothing)."""
    return int((labels[:, 1:] != IGNORE).sum())


def output_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on some hidden states, with the final soft-capping the model applies (Gemma 2)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def supervised_loss_sum(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy of `targets`, their count): hidden [B, T, H] predicts targets [B, T];
    the LM head runs on the supervised positions only."""
    selected = targets != IGNORE
    logits = output_logits(model, hidden[selected]).float()
    return F.cross_entropy(logits, targets[selected], reduction="sum"), int(selected.sum())


def check_frozen(labels: torch.Tensor, frozen: int) -> None:
    """No supervised label may fall where the model runs without autograd."""
    if bool((labels[:, : frozen + 1] != IGNORE).any()):
        raise ValueError(
            f"supervised labels inside the first {frozen + 1} positions, which run without autograd"
        )


def decoder_states(model: Any, embeds: torch.Tensor, mask: torch.Tensor, frozen: int) -> torch.Tensor:
    """Last-layer hidden states of positions frozen .. L-1 of `embeds` [B, L, H].

    The first `frozen` positions run without autograd: only their keys and values are needed, and
    the backward pass stops at position `frozen` instead of crossing the whole prompt.
    """
    mask = mask.to(embeds.device)
    if frozen == 0:
        return model.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        prefix = model.base_model(
            inputs_embeds=embeds[:, :frozen], attention_mask=mask[:, :frozen], use_cache=True
        )
    return model.base_model(
        inputs_embeds=embeds[:, frozen:],
        attention_mask=mask,
        past_key_values=prefix.past_key_values,
        use_cache=True,
    ).last_hidden_state


def lm_loss_sum(
    model: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    supervised_only: bool = True,
    frozen: int = 0,
) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy over supervised labels, their count).

    supervised_only applies the LM head only where a label is supervised, instead of at every
    position; `frozen` leading positions run without autograd (see decoder_states) and must hold
    no supervised label. Both leave the loss unchanged.
    """
    labels = labels.to(embeds.device)
    check_frozen(labels, frozen)
    hidden = decoder_states(model, embeds, mask, frozen)[:, :-1]
    targets = labels[:, frozen + 1 :]
    if supervised_only:
        return supervised_loss_sum(model, hidden, targets)
    logits = output_logits(model, hidden).float()
    loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())
