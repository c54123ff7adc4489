"""SoftCoT++'s K [INI] initial embeddings (protocol §12): K consecutive rows of the assistant's
input-embedding table (the paper), or its mean row plus small seeded noise (`ini_init: mean_noise`),
checked to be distinct before any training step.

Equal starts would give every chain the same gradient: Llama 3's reserved special tokens, where the
paper's rows begin, are reported never to have been trained, so they may be zero or equal. Training
with `rows` then stops with the rows, the settings that fix it and a one-line check for the real
weights, instead of training collapsed chains silently.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from softcot.errors import ConfigError
from softcot.methods.catalog import method_spec

INI_INITS = ("rows", "mean_noise")
# Two [INI] initialisations closer than this, relative to the embedding table's median row norm,
# count as equal (protocol §12). On this scale two independent rows of the typical norm are about
# 1.4 apart, and Gemma-3-270M's <unused2>.. rows (the tiny preset's) measured 0.16-0.84; bf16 keeps
# 8 significant bits (a relative step of 0.4-0.8%), so rows 1% apart or less barely differ once the
# assistant casts them to its dtype.
MIN_INI_DISTANCE = 1e-2
# ini_init: mean_noise draws each [INI] as the table's mean row plus Gaussian noise of expected norm
# MEAN_NOISE_SCALE x the median row norm (SoftCoT-P's default sigma), so chains start ~0.14 apart.
MEAN_NOISE_SCALE = 0.1
TABLE_CHUNK = 16384  # embedding rows per chunk when the whole table is summarised


def ini_rows(model: Any, settings: dict[str, Any]) -> tuple[int, torch.Tensor]:
    """(first row, the K rows [K, H_a]) that initialise the [INI] embeddings: consecutive rows of
    the assistant's input embeddings from `ini_rows[backbone]` on (protocol §12), as the embedding
    module outputs them (Gemma's scale included), in float32."""
    backbone, chains = model.spec.backbone, int(settings["num_scaling_times"])
    rows = settings["ini_rows"]
    if backbone not in rows:
        raise ConfigError(
            f"ini_rows has no first [INI] row for backbone {backbone!r} (assistant {model.spec.name}); "
            f"add one to the artefact's training section in params.yaml (known: {', '.join(sorted(rows))})"
        )
    first = int(rows[backbone])
    vocabulary = model.model.get_input_embeddings().num_embeddings
    if first < 0 or first + chains > vocabulary:
        raise ConfigError(
            f"ini_rows.{backbone}: rows {first} .. {first + chains - 1} are outside the vocabulary of "
            f"{model.spec.name} ({vocabulary} rows)"
        )
    with torch.no_grad():
        ids = torch.arange(first, first + chains, device=next(model.model.parameters()).device)
        return first, model.model.get_input_embeddings()(ids).float().cpu()


def table_statistics(model: Any) -> tuple[torch.Tensor, float]:
    """(mean row [H_a] in float32, median L2 norm of the rows) of the assistant's whole input
    embedding table, as the embedding module outputs it (so in the [INI] rows' own scale).

    The median norm is the "typical row norm" every [INI] distance is measured against: unlike the
    mean, a few hundred zero rows (Llama's reserved tokens) do not move it. Chunks go through the
    module on its device and are summed in float64 on the CPU, so any device gives the same values.
    """
    embedding = model.model.get_input_embeddings()
    device = next(model.model.parameters()).device
    total = torch.zeros(embedding.embedding_dim, dtype=torch.float64)
    norms = []
    with torch.no_grad():
        for lo in range(0, embedding.num_embeddings, TABLE_CHUNK):
            ids = torch.arange(lo, min(lo + TABLE_CHUNK, embedding.num_embeddings), device=device)
            rows = embedding(ids).cpu().double()
            total += rows.sum(0)
            norms.append(rows.norm(dim=-1))
    return (total / embedding.num_embeddings).float(), float(torch.cat(norms).median())


def mean_noise_rows(mean: torch.Tensor, reference_norm: float, chains: int, seed: int) -> torch.Tensor:
    """`ini_init: mean_noise`: K rows [K, H_a], each the table's mean row plus N(0, I) noise scaled
    to an expected norm of MEAN_NOISE_SCALE x `reference_norm`. The noise comes from a CPU generator
    seeded by (train.seed) alone, so the same seed gives the same rows on any device."""
    digest = hashlib.sha256(f"ini mean_noise\x1f{seed}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    noise = torch.randn(chains, mean.shape[0], generator=generator)
    return mean + MEAN_NOISE_SCALE * reference_norm / math.sqrt(mean.shape[0]) * noise


def relative_distances(rows: torch.Tensor, reference_norm: float) -> torch.Tensor:
    """The K x K L2 distances between the [INI] rows [K, H_a], divided by `reference_norm`
    (computed by differences, so equal rows are exactly 0 apart)."""
    rows = rows.double()
    return ((rows[:, None] - rows[None]).norm(dim=-1) / reference_norm).float()


def _weights_argument(model: Any, models_dir: Path) -> str:
    """What `from_pretrained` takes to load this assistant's weights: its Hub repository at the pinned
    revision where the spec names one, else the materialized directory this run loaded."""
    source = model.spec.source
    repo_id = getattr(source, "repo_id", None)
    if repo_id:
        revision = getattr(source, "revision", None)
        return repr(repo_id) + (f", revision={revision!r}" if revision else "")
    return repr(str(Path(models_dir) / model.spec.name))


def _describe_row(model: Any, row: int) -> str:
    try:
        token = model.tokenizer.convert_ids_to_tokens(row)
    except (IndexError, OverflowError, TypeError):
        token = None
    return f"{row} ({token})" if token else str(row)


def check_distinct_ini(
    model: Any,
    settings: dict[str, Any],
    first_row: int | None,
    distances: torch.Tensor,
    models_dir: Path,
) -> None:
    """Fail before any training step when two initial [INI] embeddings are (nearly) equal.

    Equal [INI] give the K chains the same input, hence the same thoughts and the same LM-loss
    gradient: they never separate, and the reference, which never trains them, would run K copies
    of one chain. The message names the rows, the assistant, the settings that fix it and the line
    of Python that shows the real weights' distances.
    """
    chains = distances.shape[0]
    groups, grouped = [], set()
    for i in range(chains):
        if i in grouped:
            continue
        near = [j for j in range(i + 1, chains) if j not in grouped and distances[i, j] < MIN_INI_DISTANCE]
        if near:
            groups.append([i, *near])
            grouped.update(near)
    if not groups:
        return
    section = f"train.{method_spec(settings['kind']).artefact.name}"
    backbone, name = model.spec.backbone, model.spec.name
    if first_row is None:
        what = "; ".join(" = ".join(f"chain {k}" for k in group) for group in groups)
        source = f"{section}.ini_init = {settings['ini_init']!r}"
        confirm = ""
    else:
        what = "; ".join(" = ".join(_describe_row(model, first_row + k) for k in group) for group in groups)
        source = f"{section}.ini_rows.{backbone} = {first_row}"
        confirm = (
            "\nConfirm on the real weights (prints the relative distances this check computed):\n"
            '  python -c "import torch; from transformers import AutoModelForCausalLM as M; '
            f"e = M.from_pretrained({_weights_argument(model, models_dir)}).get_input_embeddings()"
            f".weight.float(); r = e[{first_row}:{first_row + chains}]; "
            'print(torch.cdist(r, r) / e.norm(dim=1).median())"'
        )
    smallest = float(distances[~torch.eye(chains, dtype=torch.bool)].min())
    raise ConfigError(
        f"the K = {chains} initial [INI] embeddings of assistant {name} ({source}) are not distinct: "
        f"{'rows ' if first_row is not None else ''}{what} are equal or nearly so (within "
        f"{MIN_INI_DISTANCE:g} of the embedding table's median row norm; smallest relative distance "
        f"{smallest:.3g}). Equal [INI] give every chain the same input and gradient, "
        f"so the chains never separate (docs/protocol.md §12). Fix: set {section}.ini_init: mean_noise "
        f"(the table's mean row plus seeded noise), or point {section}.ini_rows.{backbone} at K distinct "
        f"rows.{confirm}"
    )


def initial_ini_embeddings(
    model: Any, settings: dict[str, Any], models_dir: Path
) -> tuple[int | None, torch.Tensor, dict[str, Any]]:
    """(first row or None, the K initial [INI] embeddings [K, H_a] in float32, their record entries)
    by `ini_init`: `rows` (the paper: ini_rows) or `mean_noise`; checked distinct either way."""
    chains = int(settings["num_scaling_times"])
    mean, reference_norm = table_statistics(model)
    if reference_norm <= 0:
        raise ConfigError(f"assistant {model.spec.name}: every row of its input embeddings is zero")
    if settings["ini_init"] == "rows":
        first_row, rows = ini_rows(model, settings)
    else:
        first_row, rows = None, mean_noise_rows(mean, reference_norm, chains, int(settings["seed"]))
    distances = relative_distances(rows, reference_norm)
    check_distinct_ini(model, settings, first_row, distances, models_dir)
    off_diagonal = distances[~torch.eye(chains, dtype=torch.bool)]
    record = {
        "ini_init": settings["ini_init"],
        "ini_reference_norm": float(f"{reference_norm:.6g}"),
        "ini_distance_threshold": MIN_INI_DISTANCE,
        "ini_min_relative_distance": float(f"{float(off_diagonal.min()):.4g}") if chains > 1 else None,
        "ini_pairwise_distances": [[float(f"{float(d):.4g}") for d in row] for row in distances],
    }
    return first_row, rows, record
