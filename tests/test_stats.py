"""The significance tests against exact enumeration, naive resampling and hand computations."""

import itertools
import statistics

import numpy as np
import pytest

from softcot import stats


def exact_sign_flip_p(differences: np.ndarray) -> float:
    """Every one of the 2^n sign patterns, one example at a time: the distribution the test samples."""
    observed = abs(differences.sum())
    patterns = np.array(list(itertools.product([1, -1], repeat=len(differences))))
    flipped = np.abs(patterns @ differences)
    return float(np.mean(flipped >= observed - 1e-12))


# Seed-averaged differences over five seeds: repeated values, a zero, both signs.
TINY = np.array([0.2, 0.2, 0.4, -0.2, 1.0, 0.0, 0.6, 0.2, -0.4, 0.8, 0.2, -0.6])  # n = 11 non-zero
# n = 16 non-zero: 65,536 sign patterns, more than the resample counts used with it (Monte Carlo).
SMALL = np.concatenate([TINY, [0.4, -0.2, 0.6, 0.2, -0.8]])


def test_mean_and_std_gives_sample_and_population_std():
    mean, sample_std, population_std = stats.mean_and_std(np.array([50.0, 60.0, 80.0]))
    assert mean == pytest.approx(190 / 3)
    assert sample_std == pytest.approx(statistics.stdev([50, 60, 80]))  # sqrt(700/3) = 15.275
    assert population_std == pytest.approx(statistics.pstdev([50, 60, 80]))  # sqrt(1400/9) = 12.472
    assert sample_std == pytest.approx(15.2753, abs=1e-4)


def test_mean_and_std_of_one_seed_has_no_sample_std():
    mean, sample_std, population_std = stats.mean_and_std(np.array([42.0]))
    assert (mean, population_std) == (42.0, 0.0)
    assert np.isnan(sample_std)


@pytest.mark.parametrize(
    "differences", [TINY, TINY[:6] * -1, np.array([0.4, -0.2, 0.2, 0.0, -0.4, 0.6, 0.2])]
)
def test_sign_flip_is_exact_enumeration_when_two_to_the_n_fits_the_resamples(differences):
    assert stats.sign_flip_exact(differences, resamples=40_000)
    exact = exact_sign_flip_p(differences)
    assert stats.sign_flip_test(differences, resamples=40_000, seed=3) == pytest.approx(exact, abs=1e-12)
    assert stats.sign_flip_test(differences, resamples=40_000, seed=4) == pytest.approx(exact, abs=1e-12)


def test_exact_p_of_five_equal_differences_is_two_of_thirty_two():
    # Only all-plus (the identity) and all-minus reach |sum| = 5: p = 2 / 2^5, two-sided.
    ones = np.ones(5)
    assert stats.sign_flip_test(ones, resamples=32) == 2 / 32 == 0.0625
    assert stats.sign_flip_test(-ones) == 0.0625
    # [1, 1, 1, 1, -1]: |sum| = 3 is reached by the 2 patterns with all five equal and by the 10
    # with exactly one sign different from the rest: 12 of 32.
    assert stats.sign_flip_test(np.array([1.0, 1, 1, 1, -1]), resamples=32) == 12 / 32


def test_zero_differences_are_dropped_before_counting_n():
    # Eight examples but only five non-zero: 2^5 = 32 patterns fit 32 resamples, 2^8 would not.
    padded = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    assert stats.sign_flip_exact(padded, resamples=32)
    assert stats.sign_flip_test(padded, resamples=32) == 0.0625
    assert stats.sign_flip_exact(np.zeros(5), resamples=1)  # n = 0: the identity alone, p = 1
    assert stats.sign_flip_test(np.zeros(5), resamples=1) == 1.0


def test_monte_carlo_is_used_above_the_threshold():
    ones = np.ones(5)
    assert not stats.sign_flip_exact(ones, resamples=31)
    p_values = {stats.sign_flip_test(ones, resamples=31, seed=seed) for seed in range(20)}
    assert len(p_values) > 1  # depends on the seed, unlike the exact p
    assert all(p * 32 == pytest.approx(round(p * 32)) for p in p_values)  # (b + 1) / (R + 1), R = 31


def test_sign_flip_monte_carlo_agrees_with_exact_enumeration():
    assert not stats.sign_flip_exact(SMALL, resamples=40_000)
    exact = exact_sign_flip_p(SMALL)
    estimate = stats.sign_flip_test(SMALL, resamples=40_000, seed=3)
    assert estimate != exact
    # Monte Carlo standard error is at most 0.0025 at 40,000 resamples.
    assert estimate == pytest.approx(exact, abs=0.012)


def test_sign_flip_chunks_count_every_resample(monkeypatch):
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 7)  # many small chunks and a remainder
    exact = exact_sign_flip_p(SMALL)
    assert stats.sign_flip_test(SMALL, resamples=20_003) == pytest.approx(exact, abs=0.015)
    assert stats.sign_flip_test(np.zeros(5), resamples=1_001) == 1.0  # every resample ties the observed 0
    assert stats.sign_flip_test(np.ones(40), resamples=1_001) == 1 / 1_002  # none reaches it


def test_sign_flip_default_uses_ten_thousand_resamples():
    planted = np.ones(60)  # |sum| = 60 is reached only by the identity pattern (chance 2^-59)
    assert stats.sign_flip_test(planted) == 1 / 10_001
    p = stats.sign_flip_test(SMALL)
    assert p * 10_001 == pytest.approx(round(p * 10_001))  # p = (b + 1) / (R + 1) with R = 10,000
    assert stats.sign_flip_exact(TINY) and not stats.sign_flip_exact(SMALL)  # 2^11 <= 10,000 < 2^16


def _paired_rows(rng, effect: float, n: int = 300, seeds: int = 5) -> np.ndarray:
    """Seed-averaged differences of two rows on examples of varied difficulty (shared by both rows)."""
    difficulty = rng.random(n)
    base = rng.random((seeds, n)) < difficulty
    other = rng.random((seeds, n)) < np.clip(difficulty + effect, 0, 1)
    return other.mean(0) - base.mean(0)


def test_sign_flip_planted_effect_is_significant():
    rng = np.random.default_rng(7)
    assert stats.sign_flip_test(_paired_rows(rng, effect=0.1)) < 0.001


def test_sign_flip_without_effect_rejects_at_the_nominal_rate():
    rng = np.random.default_rng(8)
    p_values = np.array([stats.sign_flip_test(_paired_rows(rng, 0.0), 999, seed=i) for i in range(400)])
    # 5% expected; the binomial 99.9% range for 400 draws is about 2%-9%.
    assert 0.015 < np.mean(p_values < 0.05) < 0.095
    assert 0.4 < np.median(p_values) < 0.6


def test_sign_flip_is_reproducible_and_symmetric():
    assert stats.sign_flip_test(TINY, 2_000, seed=5) == stats.sign_flip_test(TINY, 2_000, seed=5)
    assert stats.sign_flip_test(-TINY, 2_000, seed=5) == stats.sign_flip_test(TINY, 2_000, seed=5)


def test_bootstrap_ci_matches_naive_resampling_and_covers_the_planted_difference():
    rng = np.random.default_rng(11)
    planted = 0.15
    base = rng.random((5, 400)) < 0.5
    better = rng.random((5, 400)) < 0.5 + planted
    differences = better.mean(0) - base.mean(0)

    low, high = stats.bootstrap_ci(differences)
    assert low < planted < high
    assert low < differences.mean() < high

    # The same percentile interval from resampling example indices one by one.
    naive_rng = np.random.default_rng(12)
    indices = naive_rng.integers(0, differences.size, size=(10_000, differences.size))
    naive_low, naive_high = np.percentile(differences[indices].mean(axis=1), [2.5, 97.5])
    assert low == pytest.approx(naive_low, abs=0.006)
    assert high == pytest.approx(naive_high, abs=0.006)


def test_bootstrap_ci_chunked_is_reproducible(monkeypatch):
    whole = stats.bootstrap_ci(TINY, resamples=3_000, seed=2)
    assert stats.bootstrap_ci(TINY, resamples=3_000, seed=2) == whole
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 50)
    low, high = stats.bootstrap_ci(TINY, resamples=3_000, seed=2)
    assert low == pytest.approx(whole[0], abs=0.05) and high == pytest.approx(whole[1], abs=0.05)
    assert stats.bootstrap_ci(np.zeros(8), resamples=100) == (0.0, 0.0)


def test_holm_matches_hand_computation():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06.
    adjusted = stats.holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_ties():
    np.testing.assert_allclose(stats.holm_adjust([0.5, 0.6]), [1.0, 1.0])  # 0.5*2 = 1.0; 0.6 -> max 1.0
    np.testing.assert_allclose(stats.holm_adjust([0.02, 0.02, 0.5]), [0.06, 0.06, 0.5])
    np.testing.assert_allclose(stats.holm_adjust([0.3]), [0.3])


def test_resamples_must_be_positive():
    with pytest.raises(ValueError, match="resamples"):
        stats.sign_flip_test(TINY, resamples=0)
    with pytest.raises(ValueError, match="resamples"):
        stats.sign_flip_test(np.zeros(3), resamples=0)
