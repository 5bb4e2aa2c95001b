"""The extreme-value method: a generalised Pareto tail recovers quantiles far beyond the sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import genpareto

from monitor.errors import InputError
from monitor.thresholds import (
    MIN_PEAKS,
    NotEnoughData,
    TailFit,
    extreme_value,
    fit_tail,
    fit_threshold,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exponential_tail_quantiles_are_recovered(seed):
    values = np.random.default_rng(seed).exponential(size=100_000)
    # q = 1e-4: ten values of 10^5 lie beyond it; q = 1e-6: none does.
    assert extreme_value(values, 1e-4) == pytest.approx(-math.log(1e-4), rel=0.05)
    assert extreme_value(values, 1e-6) == pytest.approx(-math.log(1e-6), rel=0.12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_pareto_tail_quantile_is_recovered(seed):
    shape = 0.25
    values = genpareto.rvs(shape, size=100_000, random_state=seed)
    tail = fit_tail(values)
    assert tail.shape == pytest.approx(shape, abs=0.1)
    truth = (1e-5 ** -shape - 1) / shape  # P(X > truth) = 1e-5
    assert tail.quantile(1e-5) == pytest.approx(truth, rel=0.25)


def test_bounded_tail_stays_at_its_bound():
    # A bounded indicator (uniform on [0, 1]): the fitted tail must not run past 1.
    values = np.random.default_rng(4).uniform(size=100_000)
    tail = fit_tail(values)
    assert tail.shape == pytest.approx(-1.0, abs=0.05)
    assert 0.999 < tail.quantile(1e-7) < 1.001


@pytest.mark.parametrize(
    "sample",
    [
        lambda rng: rng.exponential(size=20_000),
        lambda rng: rng.standard_t(3, size=20_000),
        lambda rng: rng.normal(size=20_000),
        lambda rng: rng.uniform(size=20_000),
        lambda rng: np.round(rng.lognormal(size=20_000), 2),  # ties among the peaks
    ],
    ids=["exponential", "student-t3", "normal", "uniform", "rounded-lognormal"],
)
def test_fit_is_at_least_as_likely_as_scipys_maximum_likelihood(sample):
    values = np.sort(sample(np.random.default_rng(5)))
    tail = fit_tail(values)
    excesses = values[values > tail.initial_threshold] - tail.initial_threshold
    assert excesses.size == tail.n_peaks
    ours = genpareto.logpdf(excesses, tail.shape, 0, tail.scale).sum()
    assert ours == pytest.approx(tail.log_likelihood, rel=1e-9, abs=1e-6)
    shape, _, scale = genpareto.fit(excesses, floc=0)
    if shape >= -1:  # our fit keeps shape >= -1, where the maximum exists
        theirs = genpareto.logpdf(excesses, shape, 0, scale).sum()
        assert ours >= theirs - 1e-6 * abs(theirs)


def test_shape_zero_is_the_exponential_limit():
    exponential = TailFit(2.0, 0.98, 10_000, 200, 0.0, 1.5, 0.0)
    assert exponential.quantile(1e-6) == pytest.approx(2.0 - 1.5 * math.log(1e-6 * 10_000 / 200))
    for shape in (1e-13, -1e-13, 1e-9):
        nearly = TailFit(2.0, 0.98, 10_000, 200, shape, 1.5, 0.0)
        assert nearly.quantile(1e-6) == pytest.approx(exponential.quantile(1e-6), rel=1e-6)


def test_shifting_and_scaling_the_values_moves_the_tail_the_same_way():
    values = np.random.default_rng(6).gamma(2.0, size=50_000)
    before = fit_tail(values)
    after = fit_tail(values * 3.5 - 40.0)
    assert after.shape == pytest.approx(before.shape, rel=1e-5, abs=1e-7)
    assert after.scale == pytest.approx(before.scale * 3.5, rel=1e-5)
    assert after.quantile(1e-6) == pytest.approx(before.quantile(1e-6) * 3.5 - 40.0, rel=1e-6)
    shuffled = np.random.default_rng(7).permutation(values)
    assert fit_tail(shuffled) == before


def test_q_must_lie_below_the_share_of_peaks():
    values = np.random.default_rng(8).exponential(size=10_000)
    with pytest.raises(InputError, match=r"^q: 0\.05 is not below the share of values above the initial threshold"):
        extreme_value(values, 0.05)
    with pytest.raises(InputError, match=r"^q: must lie strictly between 0 and 1"):
        extreme_value(values, 0.0)
    with pytest.raises(InputError, match=r"^initial_quantile: must lie strictly between 0 and 1"):
        extreme_value(values, 1e-4, initial_quantile=1.0)


def test_too_few_peaks_is_not_enough_data():
    values = np.random.default_rng(9).exponential(size=400)  # 2 % of 400 = 8 peaks
    with pytest.raises(NotEnoughData) as caught:
        fit_tail(values)
    assert caught.value.needed == MIN_PEAKS and caught.value.got < MIN_PEAKS
    assert fit_tail(values, initial_quantile=0.95).n_peaks >= MIN_PEAKS
    with pytest.raises(NotEnoughData):
        fit_threshold(values, "extreme-value", q=1e-4)


def test_fit_threshold_keeps_z_q_unless_labels_object():
    values = np.random.default_rng(10).exponential(size=20_000)
    fit = fit_threshold(values, "extreme-value", q=1e-6)
    assert fit.threshold == extreme_value(values, 1e-6)
    assert fit.threshold > values.max() and fit.n_flagged == 0
    assert fit.parameters == {"q": 1e-6, "initial_quantile": 0.98, "min_samples": 20}
    assert fit.details["n_peaks"] == 400 and fit.details["z_q"] == fit.threshold

    labels = np.full(values.size, -1)
    labels[np.argsort(values)[:100]] = 0  # ID labels far below z_q agree with it
    assert fit_threshold(values, "extreme-value", labels, q=1e-6).threshold == fit.threshold

    top = np.argsort(values)[-3:]
    labels[top] = 1  # the three largest are OOD: the threshold comes down just below them
    labelled = fit_threshold(values, "extreme-value", labels, q=1e-6)
    assert labelled.n_flagged == 3 and labelled.mistakes == 0
    ordered = np.sort(values)
    assert labelled.threshold == pytest.approx((ordered[-4] + ordered[-3]) / 2)
    assert labelled.details["unsupervised_threshold"] == fit.threshold


@pytest.mark.parametrize("magnitude", [1e-290, 1e290])
def test_tail_fit_is_unaffected_by_extreme_magnitudes(magnitude):
    import warnings

    values = np.random.default_rng(11).exponential(size=20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or underflow anywhere in the fit
        scaled = fit_tail(values * magnitude)
    plain = fit_tail(values)
    # The optimum of a flat likelihood is located to about 1e-7: the rounding of the scaled
    # values moves it that much, no more.
    assert scaled.shape == pytest.approx(plain.shape, rel=1e-6)
    assert scaled.scale == pytest.approx(plain.scale * magnitude, rel=1e-6)
    assert scaled.quantile(1e-7) == pytest.approx(plain.quantile(1e-7) * magnitude, rel=1e-6)
