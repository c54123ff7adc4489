"""`softcot probe score`'s computation: the summed NLL of the gold target under every condition.

Every condition scores the same target tokens, and the prompt before the thought slot is the same
in all of them: it runs once per example and its KV cache is reused, so a condition costs only the
slot, the rest of the prompt and the target. torch is imported inside the functions that use it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from softcot.errors import DataError
from softcot.probe.conditions import centred_key, conditions
from softcot.probe.heldout import derangement


# --- the sequences -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeSequence:
    """One example's two base sequences, which end with the same scored target tokens."""

    example_id: str
    hinted: list[int]  # base prompt with BOT, N x UNK, EOT, then the target (training format)
    plain: list[int]  # the Zero-Shot CoT prompt (no hint), then the same target
    slot: int  # first UNK of `hinted`
    n: int  # thought tokens in the slot
    target: int  # scored tokens: the last `target` ids of both sequences
    shared: int  # leading ids both sequences share: their states are computed once


def plain_sequence(renderer: Any, example: dict) -> list[int]:
    """template([user: the prompt without the hint, assistant: the target])."""
    from softcot.prompts import question_text

    question = question_text(example, renderer.option_format)
    user = renderer.prompt_set.base_content(example["dataset"], question, None)
    target = renderer.prompt_set.target(example["dataset"], example, question)
    return renderer.encode(renderer.conversation([("user", user), ("assistant", target)]))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share: their states are computed once for both."""
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def probe_sequence(
    example_id: str, hinted: list[int], supervised_from: int, plain: list[int], slot: int, n: int
) -> ProbeSequence:
    """Check that both sequences end with the same target and that the slot precedes it."""
    target = len(hinted) - supervised_from
    if target < 1 or plain[len(plain) - target :] != hinted[supervised_from:]:
        raise DataError(
            f"example {example_id!r}: the prompt without the hint does not end with the same "
            f"{target} target tokens as the hinted one; the conditions would score different tokens"
        )
    if slot + n > supervised_from - 1 or len(plain) - target < 1:
        raise DataError(f"example {example_id!r}: the thought slot does not precede the scored target")
    shared = min(common_prefix(hinted[:slot], plain), len(plain) - target - 1)
    return ProbeSequence(example_id, hinted, plain, slot, n, target, shared)


# --- scoring -------------------------------------------------------------------------------------
def _forward(model: Any, embeds: Any, cache: Any) -> Any:
    """Decoder states of `embeds` [B, L, H] after the positions held in `cache` (None: none)."""
    return model.base_model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)


def _target_nll(model: Any, hidden: Any, ids: Any, target: int) -> Any:
    """Summed NLL of the last `target` ids of `ids` [1, L] per row of `hidden` [R, Lc, H], the
    states of the sequence's last Lc positions (token t is predicted from the state before it)."""
    import torch.nn.functional as F

    from softcot.training.losses import output_logits

    logits = output_logits(model, hidden[:, -target - 1 : -1]).float()
    labels = ids[:, -target:].expand(hidden.shape[0], -1)
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").sum(dim=1)


def score_sequence(model: Any, sequence: ProbeSequence, fills: dict[str, Any]) -> dict[str, float]:
    """Summed NLL (nats) of the target without the hint (`no-hint`) and with the hint under each
    slot filling in `fills`: condition -> [N, H] embeddings written over the slot, or None to keep
    the slot's own token embeddings (UNK).

    The shared leading ids run once; the no-hint rest runs on a copy of their KV cache; the hint up
    to the slot runs once more; then every filling is a row of one batch over that cache.
    """
    import torch

    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    hinted = torch.tensor([sequence.hinted], device=device)
    plain = torch.tensor([sequence.plain], device=device)
    with torch.no_grad():
        cache = None
        if sequence.shared:
            cache = _forward(model, embed(hinted[:, : sequence.shared]), None).past_key_values
        out = _forward(model, embed(plain[:, sequence.shared :]), copy.deepcopy(cache))
        sums = {"no-hint": float(_target_nll(model, out.last_hidden_state, plain, sequence.target)[0])}
        if sequence.slot > sequence.shared:
            hint = embed(hinted[:, sequence.shared : sequence.slot])
            cache = _forward(model, hint, cache).past_key_values
        names = list(fills)
        rows = embed(hinted[:, sequence.slot :]).repeat(len(names), 1, 1)
        for row, name in enumerate(names):
            if fills[name] is not None:
                rows[row, : sequence.n] = fills[name].to(device=device, dtype=rows.dtype)
        if cache is not None:
            cache.batch_repeat_interleave(len(names))
        out = _forward(model, rows, cache)
        nll = _target_nll(model, out.last_hidden_state, hinted, sequence.target)
    sums.update(zip(names, nll.tolist(), strict=True))
    return sums


@dataclass
class ProbeInputs:
    """What `score` needs besides the models: the held-out examples and the training examples."""

    examples: list[dict]
    train_examples: list[dict]  # what the probe projector trained on (its mean thoughts)
    source: str
    train_source: str
    # The training examples' assistant states are read from / written to the state cache that
    # `softcot train` keeps (results/probe/states/...): when the probe's N is the training N, the
    # mean thoughts cost no assistant pass. None: always computed.
    states_dir: Path | None = None
    train_sha256: str | None = None


def examples_dataset(inputs: ProbeInputs) -> str:
    """The dataset the probe projector trained on: it names the state cache's directory."""
    return str(inputs.train_examples[0]["dataset"])


def check_disjoint(inputs: ProbeInputs) -> None:
    """A held-out example the projector trained on would make the probe meaningless."""
    trained = {e["id"] for e in inputs.train_examples}
    leaked = [e["id"] for e in inputs.examples if e["id"] in trained]
    questions = {e["question"] for e in inputs.train_examples}
    leaked += [e["id"] for e in inputs.examples if e["question"] in questions and e["id"] not in leaked]
    if leaked:
        raise DataError(
            f"{inputs.source}: {len(leaked)} held-out examples are among the probe projector's training "
            f"examples ({inputs.train_source}), e.g. {', '.join(leaked[:3])}"
        )


def score(
    settings: dict[str, Any],
    inputs: ProbeInputs,
    base: Any,
    assistant: Any,
    trained: Any,
    batch_size: int = 16,
    centred: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per-example records: the summed and per-token NLL of the target under every condition.
    `trained` is the paper's projector; `centred` maps each centred projector's
    train.projection_center (probe.centred, in its order) to it."""
    import torch

    from softcot.prompts import PromptRenderer, load_prompt_set, locate_base_slots
    from softcot.thoughts import MASTER_DTYPES, Projector, right_pad
    from softcot.training.pair_data import (
        compute_states,
        encode_training_data,
        load_or_compute_states,
        state_cache_metadata,
    )

    check_disjoint(inputs)
    centred = centred or {}
    train = settings["train"]
    n = int(settings["num_thought_tokens"])
    prompt_set = load_prompt_set(train["prompt_set"])
    base_renderer = PromptRenderer(prompt_set, base, settings["option_format"])
    assistant_renderer = PromptRenderer(prompt_set, assistant, settings["option_format"])

    def encode(examples: list[dict], source: str) -> Any:
        return encode_training_data(
            examples, base_renderer, assistant_renderer, n, False, train["max_length"], source
        )

    held_out = encode(inputs.examples, inputs.source)
    ids, mask = right_pad([s.ids for s in held_out.base], base.pad_id)
    slots = locate_base_slots(ids, mask, base.placeholder_ids, n, held_out.example_ids).tolist()
    sequences = [
        probe_sequence(
            example["id"],
            encoded.ids,
            encoded.supervised_from,
            plain_sequence(base_renderer, example),
            slot,
            n,
        )
        for example, encoded, slot in zip(inputs.examples, held_out.base, slots, strict=True)
    ]
    states = compute_states(
        assistant, held_out, range(len(held_out)), n, batch_size, f"assistant states {inputs.source}"
    )
    training = encode(inputs.train_examples, inputs.train_source)

    def compute() -> Any:
        progress = f"assistant states {inputs.train_source}"
        return compute_states(assistant, training, range(len(training)), n, batch_size, progress)

    if inputs.states_dir is None or inputs.train_sha256 is None:
        train_states = compute()
    else:
        # The layout and metadata SoftCoT's training (softcot.methods.softcot) uses for the same states.
        path = (
            inputs.states_dir
            / assistant.spec.name
            / prompt_set.name
            / examples_dataset(inputs)
            / f"train-n{n}.safetensors"
        )
        metadata = state_cache_metadata(assistant, prompt_set.name, training, n, inputs.train_sha256)
        train_states = load_or_compute_states(path, metadata, compute)
    # The trained projector's seeded initial weights (SoftCoT's training draws them the same way).
    untrained = Projector.seeded(
        trained.in_features,
        trained.out_features,
        train["seed"],
        MASTER_DTYPES[train["projection_master_dtype"]],
    ).to(trained.weight.device)
    others = derangement(len(sequences), settings["seed"])
    device = trained.weight.device
    with torch.no_grad():
        before = untrained(states.to(device))
        # Per projector: every held-out example's thoughts and the mean of its training thoughts.
        projected = {
            center: (projector(states.to(device)), projector(train_states.to(device)).mean(dim=0))
            for center, projector in {"none": trained, **centred}.items()
        }
    keys = [key for key, _ in conditions(list(centred))]
    records = []
    for i, sequence in enumerate(tqdm(sequences, desc=f"probe {inputs.source}", unit="example")):
        fills = {"unk": None, "untrained": before[i]}
        for center, (own, mean) in projected.items():
            for key, fill in (("own", own[i]), ("shuffled", own[others[i]]), ("mean", mean)):
                fills[key if center == "none" else centred_key(key, center)] = fill
        sums = score_sequence(base.model, sequence, fills)
        records.append(
            {
                "id": sequence.example_id,
                "index": i,
                "target_tokens": sequence.target,
                "shuffled_from": sequences[others[i]].example_id,
                "nll_sum": {key: sums[key] for key in keys},
                "nll": {key: sums[key] / sequence.target for key in keys},
            }
        )
    return records
