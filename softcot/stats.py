"""Significance tests for paired per-example results: sign-flip permutation, bootstrap, Holm.

Every function takes per-example differences (row minus baseline, each example's correctness
averaged over seeds) and draws from a fixed numpy generator, so a table rebuilds identically.

Both resampling schemes work on the *distinct* difference values and their counts rather than
on the examples: with five seeds a difference takes at most eleven values, so a resample costs
O(11) instead of O(n) while following exactly the same distribution (see each function).

The permutation test is exact, not resampled, when its n non-zero differences have no more sign
patterns than the resample budget (2^n <= resamples): then all 2^n are counted.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
# Resamples x distinct values held in memory at once; bounds memory when differences are continuous.
CHUNK_ELEMENTS = 1 << 20
# |statistic| within this relative distance of the observed one counts as a tie (float rounding).
TIE_TOLERANCE = 1e-9


def mean_and_std(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, sample std with n-1, population std with n): the paper's ± convention is unknown."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    sample_std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return mean, sample_std, float(values.std(ddof=0))


def _grouped(differences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    differences = np.asarray(differences, dtype=float)
    if differences.ndim != 1 or differences.size == 0:
        raise ValueError("differences must be a non-empty 1-d array")
    return np.unique(differences, return_counts=True)


def _chunk_sizes(resamples: int, width: int) -> list[int]:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    per_chunk = max(1, CHUNK_ELEMENTS // max(width, 1))
    full, rest = divmod(resamples, per_chunk)
    return [per_chunk] * full + ([rest] if rest else [])


def _nonzero_magnitudes(differences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-zero |difference| values and their counts: zeros never change a signed sum."""
    magnitudes, counts = _grouped(np.abs(np.asarray(differences, dtype=float)))
    nonzero = magnitudes != 0
    return magnitudes[nonzero], counts[nonzero]


def sign_flip_exact(differences: np.ndarray, resamples: int = DEFAULT_RESAMPLES) -> bool:
    """Whether `sign_flip_test` enumerates every sign pattern: 2^n <= resamples, n the number of
    non-zero differences (zeros are dropped before counting)."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    _, counts = _nonzero_magnitudes(differences)
    return 2 ** int(counts.sum()) <= resamples


def sign_flip_test(
    differences: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> float:
    """Two-sided paired permutation test of mean difference 0.

    Under the null each example's difference is equally likely to have either sign, so only its
    magnitude matters. Zero differences never change the sum and are dropped; n counts the rest.

    Exact when 2^n <= resamples (`sign_flip_exact`): p is the share of all 2^n sign patterns,
    the identity included, whose |sum| reaches the observed |sum|.

    Otherwise Monte Carlo: p = (b + 1) / (R + 1), b counting the R resamples whose |sum| reaches
    the observed one. Giving each of the c examples of magnitude a a random sign is the same as
    making Binomial(c, 1/2) of them negative, so one binomial draw per distinct magnitude
    replaces c coin flips.
    """
    differences = np.asarray(differences, dtype=float)
    threshold = abs(float(differences.sum())) * (1 - TIE_TOLERANCE)
    if sign_flip_exact(differences, resamples):
        return _exact_sign_flip_p(*_nonzero_magnitudes(differences), threshold)
    magnitudes, counts = _nonzero_magnitudes(differences)
    rng = np.random.default_rng(seed)
    reached = 0
    for size in _chunk_sizes(resamples, len(magnitudes)):
        negative = rng.binomial(counts, 0.5, size=(size, len(magnitudes)))
        sums = (counts - 2 * negative) @ magnitudes
        reached += int(np.count_nonzero(np.abs(sums) >= threshold))
    return (reached + 1) / (resamples + 1)


def _exact_sign_flip_p(magnitudes: np.ndarray, counts: np.ndarray, threshold: float) -> float:
    """Share of the 2^n sign patterns whose |sum| reaches `threshold`, counted by distinct magnitude.

    The c examples of magnitude a contribute (c - 2k) a when k of them are negative, which
    comb(c, k) of the 2^c patterns do; crossing every magnitude's choices of k lists each possible
    sum with its number of patterns. That is prod(c + 1) <= 2^n sums, and the counts are integers.
    """
    sums, ways = np.zeros(1), np.ones(1, dtype=np.int64)
    for magnitude, count in zip(magnitudes, counts.tolist(), strict=True):
        negative = np.arange(count + 1)
        choose = np.array([math.comb(count, k) for k in range(count + 1)], dtype=np.int64)
        sums = (sums[:, None] + (count - 2 * negative)[None, :] * magnitude).ravel()
        ways = (ways[:, None] * choose[None, :]).ravel()
    return int(ways[np.abs(sums) >= threshold].sum()) / 2 ** int(counts.sum())


def bootstrap_ci(
    differences: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean difference.

    Drawing n examples with replacement and counting how many carry each distinct value is a
    multinomial draw with the values' observed frequencies, so each resample is one multinomial row.
    """
    values, counts = _grouped(differences)
    n = int(counts.sum())
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            rng.multinomial(n, counts / n, size=size) @ values / n
            for size in _chunk_sizes(resamples, len(values))
        ]
    )
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    The i-th smallest of m p-values is multiplied by (m - i + 1); a running maximum keeps the
    adjusted values in the same order as the raw ones, and they are capped at 1.
    """
    p_values = np.asarray(p_values, dtype=float)
    m = p_values.size
    order = np.argsort(p_values, kind="stable")
    scaled = p_values[order] * (m - np.arange(m))
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted
