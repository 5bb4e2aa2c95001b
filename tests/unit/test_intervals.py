"""Bootstrap intervals of the OOD evaluation, on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from monitor.errors import InputError
from monitor.evaluation import intervals
from monitor.metrics import roc_auc


def test_auroc_without_resampling_is_the_mann_whitney_statistic_with_ties_as_halves():
    rng = np.random.default_rng(0)
    id_values = rng.integers(0, 5, 300).astype(float)  # many ties
    ood_values = rng.integers(2, 7, 200).astype(float)
    labels = np.r_[np.zeros(300), np.ones(200)]
    expected = 100.0 * roc_auc(np.r_[id_values, ood_values], labels)
    assert intervals.auroc_draws(id_values, ood_values)[0] == pytest.approx(expected, abs=1e-9)
    # Brute force over all pairs.
    pairs = (ood_values[None, :] > id_values[:, None]) + 0.5 * (ood_values[None, :] == id_values[:, None])
    assert intervals.auroc_draws(id_values, ood_values)[0] == pytest.approx(100.0 * pairs.mean())
    # NaN is most suspicious: an OOD NaN beats every ID value.
    assert intervals.auroc_draws(np.zeros(3), np.array([np.nan]))[0] == 100.0


def test_a_draw_equals_the_auroc_of_the_resampled_sets():
    rng = np.random.default_rng(1)
    id_values, ood_values = rng.normal(0, 1, 50), rng.normal(1, 1, 40)
    id_counts, ood_counts = intervals.bootstrap_counts(50, 5, rng), intervals.bootstrap_counts(40, 5, rng)
    assert (id_counts.sum(axis=1) == 50).all() and (ood_counts.sum(axis=1) == 40).all()
    draws = intervals.auroc_draws(id_values, ood_values, id_counts, ood_counts)
    for index in range(5):
        resampled_id = np.repeat(id_values, id_counts[index])
        resampled_ood = np.repeat(ood_values, ood_counts[index])
        assert draws[index] == pytest.approx(intervals.auroc_draws(resampled_id, resampled_ood)[0])


def test_perfect_separation_has_a_zero_width_interval():
    rng = np.random.default_rng(2)
    point, draws = intervals.paired_auroc_draws({"A": np.arange(30.0)}, {"A": np.arange(30.0) + 100}, ["A"], 200, rng)
    low, high = intervals.percentile_interval(draws)
    assert point[0] == 100.0 and low[0] == 100.0 and high[0] == 100.0


def test_the_95_percent_interval_covers_the_true_auroc_about_95_times_in_100():
    # Two Gaussians one standard deviation apart: the true auROC is Phi(1 / sqrt 2) = 76.02 %.
    truth = 100.0 * norm.cdf(1.0 / math.sqrt(2.0))
    rng = np.random.default_rng(3)
    covered, widths = 0, []
    experiments = 300
    for _ in range(experiments):
        id_scores, ood_scores = {"A": rng.normal(0, 1, 150)}, {"A": rng.normal(1, 1, 150)}
        _, draws = intervals.paired_auroc_draws(id_scores, ood_scores, ["A"], 300, rng)
        low, high = intervals.percentile_interval(draws)
        covered += int(low[0] <= truth <= high[0])
        widths.append(high[0] - low[0])
    # 300 experiments: the binomial standard error of a 95 % coverage is 1.3 points.
    assert 0.90 <= covered / experiments <= 0.99
    # The width matches the closed form: 2 x 1.96 x Hanley-McNeil's standard error.
    expected_width = 2 * 1.96 * intervals.hanley_mcneil_se(truth, 150, 150)
    assert np.mean(widths) == pytest.approx(expected_width, rel=0.12)


def test_draws_are_paired_across_methods():
    rng = np.random.default_rng(4)
    base_id, base_ood = rng.normal(0, 1, 80), rng.normal(0.5, 1, 80)
    id_scores = {"A": base_id, "B": np.exp(base_id), "C": rng.normal(0, 1, 80)}
    ood_scores = {"A": base_ood, "B": np.exp(base_ood), "C": rng.normal(0, 1, 80)}
    point, draws = intervals.paired_auroc_draws(id_scores, ood_scores, ["A", "B", "C"], 100, rng)
    # B is a monotone transform of A: same auROC on every resample, only if the resample is shared.
    np.testing.assert_allclose(draws[:, 0], draws[:, 1])
    assert point[0] == pytest.approx(point[1])
    assert not np.allclose(draws[:, 0], draws[:, 2])


def test_rank_intervals_of_clear_and_tied_methods():
    rng = np.random.default_rng(5)
    n = 400
    id_scores = {"strong": rng.normal(0, 1, n), "twin1": rng.normal(0, 1, n), "twin2": rng.normal(0, 1, n),
                 "chance": rng.normal(0, 1, n)}
    ood_scores = {"strong": rng.normal(4, 1, n), "twin1": rng.normal(1, 1, n), "twin2": rng.normal(1, 1, n),
                  "chance": rng.normal(0, 1, n)}
    methods = list(id_scores)
    _, draws = intervals.paired_auroc_draws(id_scores, ood_scores, methods, 300, rng)
    ranks = intervals.rank_rows(draws)
    low, high = intervals.percentile_interval(ranks)
    # Clearly first and clearly last: a zero-width rank interval.
    assert (low[0], high[0]) == (1.0, 1.0)
    assert (low[3], high[3]) == (4.0, 4.0)
    # Two indicators of the same quality swap places: each interval spans ranks 2 to 3.
    for index in (1, 2):
        assert (low[index], high[index]) == (2.0, 3.0)
    assert ranks[:, 1:3].mean() == pytest.approx(2.5)
    # Ties share the average rank.
    np.testing.assert_array_equal(intervals.rank_rows(np.array([90.0, 99.0, 90.0, 50.0])), [2.5, 1.0, 2.5, 4.0])


def test_seed_resampling_and_spread():
    rng = np.random.default_rng(6)
    picks = intervals.seed_draws(3, 2000, rng)
    assert picks.shape == (2000, 3) and picks.min() == 0 and picks.max() == 2
    # Each model is drawn a third of the time.
    assert np.bincount(picks.ravel()) / picks.size == pytest.approx([1 / 3] * 3, abs=0.02)
    mean, spread = intervals.mean_and_spread(np.array([[1.0, 10.0], [3.0, 10.0]]))
    np.testing.assert_allclose(mean, [2.0, 10.0])
    np.testing.assert_allclose(spread, [math.sqrt(2.0), 0.0])
    mean, spread = intervals.mean_and_spread(np.array([[5.0, 6.0]]))
    assert np.isnan(spread).all()


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(InputError, match="ID and OOD samples"):
        intervals.auroc_draws(np.array([]), np.array([1.0]))
    with pytest.raises(InputError, match="counts"):
        intervals.auroc_draws(np.zeros(3), np.ones(2), np.ones((2, 4)), np.ones((2, 2)))
    with pytest.raises(InputError, match="level"):
        intervals.percentile_interval(np.zeros(10), level=1.5)
