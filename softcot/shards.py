"""Sharded evaluation: one evaluation split by example into `eval.shards` jobs, then merged.

Shard k of n (1 <= k <= n) evaluates the examples [E*(k-1)//n, E*k//n) of the E the evaluation
covers (after `eval.limit`), every seed and sample of each, and writes its generated rows to
`results/predictions/{pair}/{dataset}/{method}/shards/{k}-of-{n}.jsonl` (resuming from its own
partial file beside it). `softcot merge` checks that the shards cover the evaluation exactly,
with its settings, and writes the per-seed prediction and metrics files through the same code as
an unsharded evaluation (softcot.records). Every row samples from its own generator seeded from
(seed, example id, sample), so the prediction files are the same bytes for any shard count. The
`softcot merge` command line is softcot.commands.merge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softcot.errors import ConfigError, DataError
from softcot.io import dumps_jsonl_record, read_jsonl, write_text_atomic
from softcot.records import Evaluation, Row, all_rows, check_outputs, write_seed_files


def shard_bounds(total: int, shard: int, shards: int) -> tuple[int, int]:
    """[lo, hi) of shard `shard` (1-based) of `shards` over `total` examples; sizes differ by at most 1."""
    if shards < 1 or not 1 <= shard <= shards:
        raise ConfigError(f"shard {shard} of {shards}: needs 1 <= shard <= shards")
    return total * (shard - 1) // shards, total * shard // shards


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (`--shard 3/8`) as (K, N)."""
    try:
        shard, shards = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 3/8") from None
    shard_bounds(0, shard, shards)
    return shard, shards


# --- a shard's rows file -----------------------------------------------------------------------
def write_rows(
    path: Path,
    evaluation: Evaluation,
    shard: int,
    shards: int,
    done: dict[Row, dict],
    new_tokens: int,
    seconds: float,
) -> None:
    """Header (what was evaluated, how fast), then one line per row in (example, seed, sample) order."""
    header = {
        "pair": evaluation.pair,
        "dataset": evaluation.dataset,
        "method": evaluation.method_name,
        "shard": shard,
        "shards": shards,
        "examples": [example["id"] for example in evaluation.examples],
        "settings": evaluation.settings,
        "new_tokens": new_tokens,
        "seconds": seconds,
    }
    lines = [dumps_jsonl_record(header)]
    for row in all_rows(evaluation):
        generation = done[row]
        lines.append(
            dumps_jsonl_record(
                {
                    "id": evaluation.examples[row.example]["id"],
                    "seed": row.seed,
                    "sample": row.sample,
                    "output": generation["output"],
                    "num_tokens": generation["num_tokens"],
                    "stopped": generation["stopped"],
                }
            )
        )
    write_text_atomic(path, "".join(lines))


def read_rows(path: Path) -> tuple[dict[str, Any], list[dict]]:
    records = [record for _, record in read_jsonl(path)]
    if not records or "shard" not in records[0]:
        raise DataError(f"{path}: not a shard's rows file (no header)")
    return records[0], records[1:]


def merge(
    evaluation: Evaluation, shard_files: list[Path], predictions: list[Path], metrics: list[Path]
) -> None:
    """Check that the shards are this evaluation's, in order and complete; write its seed files."""
    check_outputs(evaluation, predictions, metrics)
    shards = len(shard_files)
    index = {example["id"]: i for i, example in enumerate(evaluation.examples)}
    done: dict[Row, dict] = {}
    new_tokens, seconds = 0, 0.0
    for shard, path in enumerate(shard_files, start=1):
        header, rows = read_rows(path)
        lo, hi = shard_bounds(len(evaluation.examples), shard, shards)
        expected = [example["id"] for example in evaluation.examples[lo:hi]]
        if (header["shard"], header["shards"]) != (shard, shards):
            raise DataError(
                f"{path}: holds shard {header['shard']} of {header['shards']}, expected {shard} of {shards}"
            )
        if json.dumps(header["settings"], sort_keys=True) != json.dumps(evaluation.settings, sort_keys=True):
            raise DataError(f"{path}: generated with other settings than this merge's; rerun that shard")
        if header["examples"] != expected:
            raise DataError(f"{path}: covers other examples than shard {shard} of {shards} of the test set")
        for row in rows:
            key = Row(index[row["id"]], row["seed"], row["sample"])
            done[key] = {name: row[name] for name in ("output", "num_tokens", "stopped")}
        new_tokens += int(header["new_tokens"])
        seconds += float(header["seconds"])
    missing = [row for row in all_rows(evaluation) if row not in done]
    if missing:
        example = evaluation.examples[missing[0].example]["id"]
        raise DataError(
            f"the shards lack {len(missing)} rows (first: {example}, seed {missing[0].seed}, "
            f"sample {missing[0].sample})"
        )
    write_seed_files(evaluation, done, new_tokens / seconds if seconds else 0.0, predictions, metrics)
