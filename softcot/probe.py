"""`softcot probe`: what the soft thoughts carry, measured by teacher-forced likelihood.

For each held-out example the base model scores the gold target (rationale and answer, in the
training target format) under six conditions that differ only in the thought hint:

    no-hint    the Zero-Shot CoT prompt, without the hint
    unk        the hint with the base model's own UNK embeddings in the slot (CoT-UNK)
    untrained  the example's thoughts through the untrained projector (the probe projector's
               seeded initial weights)
    own        the example's thoughts through the trained projector (SoftCoT)
    shuffled   another example's thoughts through the trained projector (a fixed derangement of
               the held-out set)
    mean       the trained projector's thoughts averaged over its training examples: one soft
               prompt for every question

`own` against `shuffled` and `mean` separates information about *this* question from a learned
soft prompt. Every condition scores the same target tokens, and the prompt before the thought slot
is the same in all of them: it runs once per example and its KV cache is reused, so a condition
costs only the slot, the rest of the prompt and the target. Forward passes only, no sampling.

    softcot probe split   a train split -> fit (the probe projector trains on it) + validation
                          (its last n examples, for choosing the training settings)
    softcot probe score   one (pair, dataset, held-out set) -> a per-example NLL file
    softcot probe table   per-example files -> reports/thought_probe.{md,csv,json,png}
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from softcot import stats
from softcot.errors import ConfigError, DataError, ModelError
from softcot.io import (
    atomic_path,
    read_jsonl,
    sha256_file,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from softcot.plan import PROBE_HELDOUT, Plan, check_keys, parse_settings
from softcot.resources import add_threads_argument, set_torch_threads

# (key, label) in the table's order; `own` is what every other condition is tested against.
CONDITIONS = (
    ("no-hint", "No hint (Zero-Shot CoT prompt)"),
    ("unk", "Hint with UNK embeddings (CoT-UNK)"),
    ("untrained", "Untrained projector, own thoughts"),
    ("own", "Trained projector, own thoughts"),
    ("shuffled", "Trained projector, another example's thoughts"),
    ("mean", "Trained projector, mean training thoughts"),
)
REFERENCE = "own"
LABELS = dict(CONDITIONS)
ALPHA = 0.05
SIGNIFICANT_MARK = "†"
SPLIT_KEYS = {"validation"}
SCORE_KEYS = {"pair", "option_format", "num_thought_tokens", "examples", "seed", "train"}
TABLE_KEYS = {
    "name",
    "heldout",
    "preset",
    "pair",
    "role",
    "models",
    "datasets",
    "examples",
    "validation",
    "num_thought_tokens",
    "seed",
    "train",
}


# --- the held-out sets ---------------------------------------------------------------------------
def derangement(n: int, seed: int) -> list[int]:
    """A permutation of range(n) without a fixed point, fixed by `seed`: Sattolo's algorithm,
    which draws one n-cycle uniformly (numpy default_rng(seed)). Example i gets the thoughts of
    example result[i], never its own."""
    if n < 2:
        raise DataError(f"another example's thoughts need at least 2 held-out examples, got {n}")
    rng = np.random.default_rng(seed)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))  # 0 <= j < i: the swap never leaves i in place
        order[i], order[j] = order[j], order[i]
    return order


def split_train(examples: Sequence[dict], validation: int, source: str) -> tuple[list[dict], list[dict]]:
    """(fit, validation): the validation part is the last `validation` examples of a train split,
    so nothing the probe projector trains on is ever among them."""
    splits = {(e["dataset"], e["split"]) for e in examples}
    if any(split != "train" for _, split in splits):
        raise DataError(f"{source}: the probe splits a train split, got {sorted(splits)}")
    if len(examples) <= validation:
        raise DataError(
            f"{source}: {len(examples)} examples cannot give {validation} to probe.validation and "
            "train on the rest"
        )
    return list(examples[:-validation]), list(examples[-validation:])


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

    from softcot.train import output_logits

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
) -> list[dict[str, Any]]:
    """Per-example records: the summed and per-token NLL of the target under every condition."""
    import torch

    from softcot.prompts import PromptRenderer, load_prompt_set, locate_base_slots
    from softcot.thoughts import MASTER_DTYPES, Projector, right_pad
    from softcot.train import (
        compute_states,
        encode_training_data,
        load_or_compute_states,
        state_cache_metadata,
    )

    check_disjoint(inputs)
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
        # The layout and metadata softcot.train.train_softcot_projector uses for the same states.
        path = (
            inputs.states_dir
            / assistant.spec.name
            / prompt_set.name
            / examples_dataset(inputs)
            / f"train-n{n}.safetensors"
        )
        metadata = state_cache_metadata(assistant, prompt_set.name, training, n, inputs.train_sha256)
        train_states = load_or_compute_states(path, metadata, compute)
    # The trained projector's seeded initial weights (softcot.train.new_training_state draws them).
    untrained = Projector.seeded(
        trained.in_features,
        trained.out_features,
        train["seed"],
        MASTER_DTYPES[train["projection_master_dtype"]],
    ).to(trained.weight.device)
    others = derangement(len(sequences), settings["seed"])
    with torch.no_grad():
        own = trained(states.to(trained.weight.device))
        before = untrained(states.to(trained.weight.device))
        mean = trained(train_states.to(trained.weight.device)).mean(dim=0)
    records = []
    for i, sequence in enumerate(tqdm(sequences, desc=f"probe {inputs.source}", unit="example")):
        fills = {"unk": None, "untrained": before[i], "own": own[i], "shuffled": own[others[i]], "mean": mean}
        sums = score_sequence(base.model, sequence, fills)
        records.append(
            {
                "id": sequence.example_id,
                "index": i,
                "target_tokens": sequence.target,
                "shuffled_from": sequences[others[i]].example_id,
                "nll_sum": {key: sums[key] for key, _ in CONDITIONS},
                "nll": {key: sums[key] / sequence.target for key, _ in CONDITIONS},
            }
        )
    return records


# --- the table -----------------------------------------------------------------------------------
@dataclass
class DatasetResult:
    """One dataset's per-example NLL per token, aligned by example (file order)."""

    dataset: str
    ids: list[str]
    tokens: np.ndarray  # [examples] scored tokens
    nll: dict[str, np.ndarray]  # condition -> [examples] mean NLL per target token
    nll_sum: dict[str, np.ndarray]  # condition -> [examples] summed NLL
    record: dict[str, Any]  # the probe projector's training record
    examples_sha256: str
    fit_sha256: str


@dataclass
class Comparison:
    """`own` minus another condition on one dataset, per example, in nats per token."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.p_adjusted < ALPHA


@dataclass
class ProbeTable:
    spec: dict[str, Any]
    results: dict[str, DatasetResult]
    intervals: dict[tuple[str, str], tuple[float, float]]  # (dataset, condition) -> CI of the mean
    comparisons: dict[tuple[str, str], Comparison]  # (dataset, condition) -> own minus condition
    resamples: int
    commit: str


def read_per_example(path: Path, dataset: str, record: dict, examples: Path, fit: Path) -> DatasetResult:
    ids, tokens, nll, sums = [], [], {k: [] for k, _ in CONDITIONS}, {k: [] for k, _ in CONDITIONS}
    for lineno, row in read_jsonl(path):
        try:
            ids.append(str(row["id"]))
            tokens.append(int(row["target_tokens"]))
            for key, _ in CONDITIONS:
                nll[key].append(float(row["nll"][key]))
                sums[key].append(float(row["nll_sum"][key]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: not a probe record ({type(exc).__name__}: {exc})") from exc
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise DataError(f"{path}: expected at least 2 records with distinct ids, got {len(ids)}")
    return DatasetResult(
        dataset,
        ids,
        np.array(tokens),
        {k: np.array(v) for k, v in nll.items()},
        {k: np.array(v) for k, v in sums.items()},
        record,
        sha256_file(examples)[:12],
        sha256_file(fit)[:12],
    )


def build_table(
    spec: dict[str, Any],
    per_example: Sequence[Path],
    records: Sequence[Path],
    examples: Sequence[Path],
    fits: Sequence[Path],
    resamples: int = stats.DEFAULT_RESAMPLES,
) -> ProbeTable:
    """Per condition: mean NLL per token and its bootstrap CI over examples; `own` against every
    other condition: paired sign-flip permutation test on per-example NLL, Holm over the table."""
    from softcot.report import git_commit

    lists = (per_example, records, examples, fits)
    if any(len(paths) != len(spec["datasets"]) for paths in lists):
        raise ConfigError("pass one per-example file, record, examples file and fit file per dataset")
    missing = [str(p) for paths in lists for p in paths if not Path(p).exists()]
    if missing:
        raise DataError(f"{len(missing)} probe inputs are missing:\n  " + "\n  ".join(missing))
    results = {}
    for dataset, path, record, held_out, fit in zip(spec["datasets"], *lists, strict=True):
        try:
            training = json.loads(Path(record).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{record}: not valid JSON ({exc.msg})") from exc
        results[dataset] = read_per_example(Path(path), dataset, training, Path(held_out), Path(fit))
    intervals, comparisons = {}, {}
    for dataset, result in results.items():
        for key, _ in CONDITIONS:
            intervals[dataset, key] = stats.bootstrap_ci(result.nll[key], resamples)
            if key == REFERENCE:
                continue
            differences = result.nll[REFERENCE] - result.nll[key]
            low, high = stats.bootstrap_ci(differences, resamples)
            comparisons[dataset, key] = Comparison(
                float(differences.mean()), low, high, stats.sign_flip_test(differences, resamples)
            )
    adjusted = stats.holm_adjust([c.p_value for c in comparisons.values()])
    for comparison, p_adjusted in zip(comparisons.values(), adjusted, strict=True):
        comparison.p_adjusted = float(p_adjusted)
    return ProbeTable(spec, results, intervals, comparisons, resamples, git_commit())


def render_markdown(table: ProbeTable) -> str:
    spec, datasets = table.spec, table.spec["datasets"]
    where = (
        "held-out test examples" if spec["heldout"] == "test" else "the validation slice of the train split"
    )
    lines = [
        f"# Thought probe: NLL per target token (nats) of the gold rationale and answer, pair "
        f"{spec['pair']}, {where}",
        "",
        "| Condition | " + " | ".join(datasets) + " |",
        "|:--" + "|--:" * len(datasets) + "|",
    ]
    for key, label in CONDITIONS:
        cells = []
        for dataset in datasets:
            mean = float(table.results[dataset].nll[key].mean())
            low, high = table.intervals[dataset, key]
            comparison = table.comparisons.get((dataset, key))
            mark = SIGNIFICANT_MARK if comparison and comparison.significant else ""
            cells.append(f"{mean:.4f} [{low:.4f}, {high:.4f}]{mark}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{LABELS[REFERENCE]} minus each condition, nats per token [95% CI], p (Holm-adjusted p); "
        "negative: own thoughts make the gold target more likely:",
        "",
        "| Condition | " + " | ".join(datasets) + " |",
        "|:--" + "|--:" * len(datasets) + "|",
    ]
    for key, label in CONDITIONS:
        if key == REFERENCE:
            continue
        cells = []
        for dataset in datasets:
            c = table.comparisons[dataset, key]
            cells.append(
                f"{c.delta:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p={c.p_value:.4f} ({c.p_adjusted:.4f})"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""] + [f"{i}. {note}" for i, note in enumerate(_notes(table), start=1)]
    return "\n".join(lines) + "\n"


def _training_note(dataset: str, result: DatasetResult, validation: int) -> str:
    record = result.record
    settings = record.get("settings", {})
    losses = ", ".join(f"{loss:.4f}" for loss in record.get("epoch_losses", []))
    return (
        f"{dataset}: {record.get('examples')} examples (the first of the train split without its last "
        f"{validation}), {settings.get('epochs')} epoch(s), {record.get('steps')} steps of batch "
        f"{settings.get('batch_size')}, lr {settings.get('lr')} with linear decay, "
        f"N={settings.get('num_thought_tokens')} at training, seed {settings.get('seed')}; mean loss per "
        f"epoch {losses}"
    )


def _notes(table: ProbeTable) -> list[str]:
    spec, datasets = table.spec, table.spec["datasets"]
    n_tests = len(table.comparisons)
    heldout = (
        "the first examples of each test split"
        if spec["heldout"] == "test"
        else f"the last {spec['validation']} examples of each train split (never trained on)"
    )
    models = spec["models"]
    return [
        "Cell: the mean over examples of each example's mean negative log-likelihood per target token "
        "(nats), teacher-forced; [95% CI]: percentile bootstrap over examples, "
        f"{table.resamples:,} resamples. Target: the gold rationale and answer in the training target "
        "format (the assistant turn as the projector is trained on it); every condition scores the same "
        "tokens: "
        + ", ".join(f"{ds} {int(table.results[ds].tokens.sum()):,}" for ds in datasets)
        + " in all.",
        f"Conditions: the base prompt without the hint (Zero-Shot CoT); with the hint and "
        f"N={spec['num_thought_tokens']} thought tokens whose slot holds the base model's UNK embeddings "
        "(CoT-UNK), the example's assistant thoughts through the untrained projector (its seeded "
        "initial weights), through the trained projector (own), another held-out example's thoughts "
        f"through it (a fixed derangement: Sattolo cycle from numpy default_rng({spec['seed']}), no "
        "example keeps its own), or the trained projector's thoughts averaged over its training "
        "examples (one soft prompt for all questions). The prompt before the slot is computed once "
        "per example and its KV cache reused.",
        f"{SIGNIFICANT_MARK}: Holm-adjusted p < {ALPHA} for own thoughts against that condition. Test: "
        "two-sided paired sign-flip permutation test on per-example NLL per token (own minus "
        f"condition), {table.resamples:,} resamples from numpy default_rng({stats.DEFAULT_SEED}), "
        f"p = (b+1)/(R+1). Correction: Holm–Bonferroni over all {n_tests} comparisons of this table. "
        f"CI of a difference: percentile bootstrap, {table.resamples:,} resamples.",
        f"Examples ({heldout}): " + ", ".join(f"{ds} {len(table.results[ds].ids)}" for ds in datasets) + ".",
        "Probe projector (its own artefact, not the main tables'): "
        + "; ".join(_training_note(ds, table.results[ds], spec["validation"]) for ds in datasets)
        + ". Its settings were chosen on the validation slice (reports/thought_probe_validation.md), "
        "never on the test split.",
        f"Pair: {spec['pair']} (assistant {models['assistant']}, base {models['base']}); preset "
        f"{spec['preset']}; prompt set {spec['train']['prompt_set']}.",
        f"Code: git commit {table.commit}.",
        "Data: sha256 (first 12 hex) of the scored file and of the fit part trained on: "
        + ", ".join(
            f"{ds} {table.results[ds].examples_sha256} / {table.results[ds].fit_sha256}" for ds in datasets
        )
        + ". Per-example values: results/probe/{pair}/{dataset}/"
        + f"{spec['heldout']}/per_example.jsonl.",
    ]


def csv_rows(table: ProbeTable) -> list[dict[str, Any]]:
    """One row per (dataset, condition), every number at full precision."""
    rows = []
    for dataset, result in table.results.items():
        for key, label in CONDITIONS:
            c = table.comparisons.get((dataset, key))
            low, high = table.intervals[dataset, key]
            rows.append(
                {
                    "table": table.spec["name"],
                    "pair": table.spec["pair"],
                    "dataset": dataset,
                    "condition": key,
                    "label": label,
                    "n_examples": len(result.ids),
                    "n_tokens": int(result.tokens.sum()),
                    "mean_nll": float(result.nll[key].mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "pooled_nll": float(result.nll_sum[key].sum() / result.tokens.sum()),
                    "own_minus": c.delta if c else "",
                    "diff_ci_low": c.ci_low if c else "",
                    "diff_ci_high": c.ci_high if c else "",
                    "p_value": c.p_value if c else "",
                    "p_adjusted": c.p_adjusted if c else "",
                    "significant": c.significant if c else "",
                }
            )
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def metrics(table: ProbeTable) -> dict[str, dict[str, float]]:
    """{condition: {dataset: mean NLL per token}} for `dvc exp show`."""
    return {
        key: {ds: round(float(r.nll[key].mean()), 6) for ds, r in table.results.items()}
        for key, _ in CONDITIONS
    }


def write_plot(path: Path, table: ProbeTable) -> None:
    """Per dataset, the conditions side by side: mean NLL per token with its 95% bootstrap CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = table.spec["datasets"]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(datasets) + 3), 4))
    width = 0.8 / len(CONDITIONS)
    for i, (key, label) in enumerate(CONDITIONS):
        xs = [d + (i - (len(CONDITIONS) - 1) / 2) * width for d in range(len(datasets))]
        means = [float(table.results[ds].nll[key].mean()) for ds in datasets]
        lows = [m - table.intervals[ds, key][0] for m, ds in zip(means, datasets, strict=True)]
        highs = [table.intervals[ds, key][1] - m for m, ds in zip(means, datasets, strict=True)]
        ax.errorbar(xs, means, yerr=[lows, highs], fmt="o", capsize=3, label=label)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("NLL per target token (nats), mean and 95% CI")
    ax.set_title(f"Thought probe, pair {table.spec['pair']} ({table.spec['heldout']})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def write_reports(table: ProbeTable, outputs: dict[str, Path]) -> list[Path]:
    write_text_atomic(outputs["md"], render_markdown(table))
    write_csv(outputs["csv"], csv_rows(table))
    write_json_atomic(outputs["json"], metrics(table))
    write_plot(outputs["png"], table)
    return [outputs[suffix] for suffix in ("md", "csv", "json", "png")]


# --- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--settings", help="the step's settings as JSON (Snakemake passes them); default: from --params"
        )
        sub.add_argument("--params", default="params.yaml", help="configuration file (default: %(default)s)")

    split = actions.add_parser("split", help="cut a train split into fit and validation parts")
    split.add_argument("--dataset", required=True)
    common(split)
    split.add_argument("--train", required=True, help="prepared train file")
    split.add_argument("--fit", required=True, help="the fit part to write")
    split.add_argument("--validation", required=True, help="the validation part to write")

    scoring = actions.add_parser("score", help="score the six conditions on held-out examples")
    scoring.add_argument("--pair", required=True, help="model pair name (params.yaml presets.<preset>.pairs)")
    scoring.add_argument("--dataset", required=True)
    scoring.add_argument("--heldout", choices=PROBE_HELDOUT, default="test", help="which held-out set")
    common(scoring)
    scoring.add_argument("--examples", required=True, help="the held-out examples (prepared format)")
    scoring.add_argument("--fit", required=True, help="the fit part the probe projector trained on")
    scoring.add_argument("--projector", required=True, help="the probe projector checkpoint")
    scoring.add_argument("--record", required=True, help="its training record (projector.json)")
    scoring.add_argument("--models-dir", default="results/models", help="materialized models")
    scoring.add_argument(
        "--states", default="results/probe/states", help="the probe training's assistant state cache"
    )
    scoring.add_argument("--out", required=True, help="the per-example file to write (JSON lines)")
    scoring.add_argument("--batch-size", type=int, default=16, help="examples per assistant forward pass")
    add_threads_argument(scoring)
    scoring.add_argument(
        "--local-path", action="append", default=[], metavar="MODEL=DIR", help="params models.local_paths"
    )

    table = actions.add_parser("table", help="build reports/thought_probe.* from per-example files")
    table.add_argument("--name", default="thought_probe", help="the report's name (default: %(default)s)")
    common(table)
    for what in ("per-example", "records", "examples", "fit"):
        table.add_argument(f"--{what}", nargs="+", required=True, type=Path, help="one per dataset, in order")
    for suffix in ("md", "csv", "json", "png"):
        table.add_argument(f"--{suffix}", required=True, type=Path, help=f"the {suffix} report to write")
    table.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES)


def _settings(args: argparse.Namespace, resolve, keys: set[str]) -> dict[str, Any]:
    settings = (
        resolve(Plan.load(args.params)).settings if args.settings is None else parse_settings(args.settings)
    )
    check_keys(settings, keys, "--settings" if args.settings is not None else args.params)
    return settings


def _run_split(args: argparse.Namespace) -> int:
    from softcot.data.schema import read_prepared

    settings = _settings(args, lambda plan: plan.probe_split(args.dataset), SPLIT_KEYS)
    examples = read_prepared(args.train)
    if examples[0]["dataset"] != args.dataset:
        raise DataError(f"{args.train}: holds {examples[0]['dataset']}, not {args.dataset}")
    fit, validation = split_train(examples, int(settings["validation"]), args.train)
    write_jsonl_atomic(args.fit, fit)
    write_jsonl_atomic(args.validation, validation)
    print(
        f"softcot probe split: {len(fit)} fit -> {args.fit}, "
        f"{len(validation)} validation -> {args.validation}"
    )
    return 0


def _check_record(path: Path, settings: dict[str, Any]) -> None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable training record ({exc})") from exc
    trained = record.get("settings", {})
    differing = sorted(k for k, v in settings["train"].items() if trained.get(k) != v)
    if differing or trained.get("pair") != settings["pair"]:
        raise ModelError(
            f"{path}: the probe projector was trained with other settings "
            f"({', '.join(differing) or 'pair'}); train it again (snakemake reruns it)"
        )


def _run_score(args: argparse.Namespace) -> int:
    from softcot.data.schema import read_prepared
    from softcot.models import load_model
    from softcot.models.registry import parse_local_paths
    from softcot.thoughts import check_projector_file, load_projector

    settings = _settings(args, lambda plan: plan.probe(args.pair, args.dataset, args.heldout), SCORE_KEYS)
    set_torch_threads(args.threads)
    examples = read_prepared(args.examples)
    if examples[0]["dataset"] != args.dataset:
        raise DataError(f"{args.examples}: holds {examples[0]['dataset']}, not {args.dataset}")
    if settings["examples"] is not None:
        examples = examples[: int(settings["examples"])]
    train_examples = read_prepared(args.fit)
    if settings["train"]["limit"] is not None:
        train_examples = train_examples[: int(settings["train"]["limit"])]
    inputs = ProbeInputs(
        examples, train_examples, str(args.examples), str(args.fit), Path(args.states), sha256_file(args.fit)
    )
    check_disjoint(inputs)
    _check_record(Path(args.record), settings)
    local = parse_local_paths(args.local_path)
    models = settings["pair"]
    base = load_model(models["base"], args.models_dir, local_paths=local)
    same = models["assistant"] == models["base"]
    assistant = base if same else load_model(models["assistant"], args.models_dir, local_paths=local)
    check_projector_file(args.projector, assistant.model.config.hidden_size, base.model.config.hidden_size)
    trained = load_projector(args.projector, device=base.model.device)
    records = score(settings, inputs, base, assistant, trained, args.batch_size)
    write_jsonl_atomic(args.out, records)
    means = {key: np.mean([r["nll"][key] for r in records]) for key, _ in CONDITIONS}
    print("softcot probe score: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()) + f" -> {args.out}")
    return 0


def _run_table(args: argparse.Namespace) -> int:
    if args.resamples < 1:
        raise ConfigError(f"--resamples must be at least 1, got {args.resamples}")
    spec = _settings(args, lambda plan: plan.probe_table(args.name), TABLE_KEYS)
    table = build_table(spec, args.per_example, args.records, args.examples, args.fit, args.resamples)
    outputs = {suffix: getattr(args, suffix) for suffix in ("md", "csv", "json", "png")}
    for path in write_reports(table, outputs):
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    return {"split": _run_split, "score": _run_score, "table": _run_table}[args.action](args)
