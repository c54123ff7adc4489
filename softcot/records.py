"""Prediction records and per-seed metrics from generated rows (docs/design.md §4).

A *row* is one (example, seed, sample) triple and its generation. An unsharded evaluation
(softcot.evaluate) and the merge of a sharded one (softcot.shards) both end here, so the
prediction files are the same bytes whichever way the rows were generated. No torch: a merge
job needs neither a model nor a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softcot.answers import extract_answer, is_correct
from softcot.errors import ConfigError
from softcot.io import write_json_atomic, write_jsonl_atomic
from softcot.voting import vote


@dataclass(frozen=True)
class Row:
    example: int  # index into the evaluation's examples
    seed: int
    sample: int


@dataclass
class Evaluation:
    """What decides an evaluation's records: one method of a pair on some examples of a dataset."""

    pair: str
    dataset: str
    method_name: str
    settings: dict[str, Any]
    examples: list[dict]
    # sha256 of the trained artefact's checkpoint the outputs come from (None: the method has none),
    # so a table can tell that an artefact was retrained after the evaluation.
    artefact_sha256: str | None = field(default=None, kw_only=True)


def rows_per_seed(settings: dict[str, Any]) -> int:
    """Rows per (example, seed): `samples`, times `chains` for a method that feeds several
    soft-thought chains per example (SoftCoT++, SoftCoT-P; absent: 1). Row sample s belongs to
    chain s // samples, and one vote covers all chains x samples answers (protocol §10, §12)."""
    return int(settings["samples"]) * int(settings.get("chains", 1))


CHAIN_STREAMS = ("independent", "shared")


def stream_sample(settings: dict[str, Any], sample: int) -> int:
    """The sample index whose random stream row `sample` draws from (softcot.generate.row_seed).

    `chain_streams: independent` (the default, and for a method without chains): its own, so
    every chain samples independently. `shared`: sample `sample % samples`, so sample r of every
    chain draws the same stream, as the reference's re-seeding before each chain did for R > 1
    (protocol §12). Either way it depends on the row alone, never on its batch or shard."""
    streams = settings.get("chain_streams", "independent")
    if streams not in CHAIN_STREAMS:
        raise ConfigError(f"chain_streams must be one of {', '.join(CHAIN_STREAMS)}, got {streams!r}")
    return sample % int(settings["samples"]) if streams == "shared" else sample


def all_rows(evaluation: Evaluation) -> list[Row]:
    samples = rows_per_seed(evaluation.settings)
    return [
        Row(example, seed, sample)
        for example in range(len(evaluation.examples))
        for seed in evaluation.settings["seeds"]
        for sample in range(samples)
    ]


def seed_records(evaluation: Evaluation, seed: int, done: dict[Row, dict]) -> list[dict]:
    """One prediction record per example for one seed (docs/design.md §4), votes for k > 1 samples."""
    extractor, samples = evaluation.settings["extractor"], rows_per_seed(evaluation.settings)
    records = []
    for index, example in enumerate(evaluation.examples):
        generations = [done[Row(index, seed, s)] for s in range(samples)]
        answers = [extract_answer(evaluation.dataset, g["output"], extractor) for g in generations]
        prediction = answers[0] if samples == 1 else vote(answers, evaluation.settings["vote"])
        record = {
            "id": example["id"],
            "dataset": evaluation.dataset,
            "pair": evaluation.pair,
            "method": evaluation.method_name,
            "seed": seed,
            "output": generations[0]["output"],
            "prediction": prediction,
            "gold": example["answer"],
            "correct": is_correct(evaluation.dataset, prediction, example["answer"], extractor),
            "generated_tokens": sum(g["num_tokens"] for g in generations),
        }
        if samples > 1:
            record["samples"] = answers
            record["outputs"] = [g["output"] for g in generations]
        records.append(record)
    return records


def seed_metrics(evaluation: Evaluation, seed: int, records: list[dict], tokens_per_second: float) -> dict:
    n = len(records)
    return {
        "pair": evaluation.pair,
        "dataset": evaluation.dataset,
        "method": evaluation.method_name,
        "seed": seed,
        "n": n,
        "correct": sum(r["correct"] for r in records),
        "accuracy": sum(r["correct"] for r in records) / n,
        "extraction_failures": sum(r["prediction"] is None for r in records),
        "mean_generated_tokens": sum(r["generated_tokens"] for r in records) / n,
        "tokens_per_second": tokens_per_second,
        "extractor": evaluation.settings["extractor"],
        "vote": evaluation.settings["vote"],
        "settings": evaluation.settings,
        "artefact_sha256": evaluation.artefact_sha256,
    }


def check_outputs(evaluation: Evaluation, predictions: list[Path], metrics: list[Path]) -> None:
    seeds = evaluation.settings["seeds"]
    if not len(predictions) == len(metrics) == len(seeds):
        raise ConfigError(
            f"{len(seeds)} seeds need as many prediction and metrics files "
            f"(got {len(predictions)} and {len(metrics)})"
        )


def write_seed_files(
    evaluation: Evaluation,
    done: dict[Row, dict],
    tokens_per_second: float,
    predictions: list[Path],
    metrics: list[Path],
) -> None:
    """Each seed's prediction and metrics file (predictions[i] and metrics[i] belong to seeds[i])."""
    check_outputs(evaluation, predictions, metrics)
    seeds = evaluation.settings["seeds"]
    for seed, prediction_path, metrics_path in zip(seeds, predictions, metrics, strict=True):
        records = seed_records(evaluation, seed, done)
        write_jsonl_atomic(prediction_path, records)
        write_json_atomic(metrics_path, seed_metrics(evaluation, seed, records, tokens_per_second))
