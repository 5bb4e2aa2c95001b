"""Proportion, two-means and the label rule: exact against brute force, invariant where they must be.

The brute force enumerates every threshold (below the smallest value, then at each distinct
value, flagging the values strictly above it) in exact rational arithmetic and applies the
documented rules literally; the implementation must pick the same values to flag.
"""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import thresholds
from monitor.errors import InputError, MonitorError
from monitor.thresholds import NotEnoughData, fit_threshold, proportion, two_means

TIE = Fraction(thresholds.TIE_RTOL)

small_integers = st.lists(st.integers(-20, 20), min_size=1, max_size=25)
moderate_floats = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False), min_size=1, max_size=25
)
any_values = st.one_of(small_integers, moderate_floats)


# --- brute force ---------------------------------------------------------------------------


def all_partitions(values):
    """Every way a threshold can flag values: (flagged mask) for t below min and t = each value."""
    cuts = [None] + sorted(set(values))
    return [tuple(True if cut is None else value > cut for value in values) for cut in cuts]


def within_ss(values, flagged) -> Fraction:
    total = Fraction(0)
    for side in (True, False):
        group = [Fraction(value) for value, mark in zip(values, flagged) if mark is side]
        if group:
            mean = sum(group) / len(group)
            total += sum((value - mean) ** 2 for value in group)
    return total


def labelled_mistakes(flagged, labels) -> int:
    return sum((label == 1 and not mark) or (label == 0 and mark) for mark, label in zip(flagged, labels))


def brute_force(values, criterion, labels=None):
    """The documented rule: fewest labelled mistakes, then the best criterion (near-ties within
    the criterion's tolerance), then the fewest flagged values."""
    candidates = all_partitions(values)
    if labels is not None and any(label != -1 for label in labels):
        fewest = min(labelled_mistakes(c, labels) for c in candidates)
        candidates = [c for c in candidates if labelled_mistakes(c, labels) == fewest]
    costs = [criterion(c) for c in candidates]
    best = min(cost for cost, _ in costs)
    near = [c for c, (cost, tolerance) in zip(candidates, costs) if cost <= best + tolerance]
    return min(near, key=sum)


def two_means_criterion(values):
    total = within_ss(values, (False,) * len(values))
    return lambda flagged: (within_ss(values, flagged), TIE * total)


def proportion_criterion(values, p):
    target = Fraction(p) * len(values)
    tolerance = Fraction(1e-9) * max(1, target)
    return lambda flagged: (abs(sum(flagged) - target), tolerance)


def flagged_by(values, threshold):
    return tuple(value > threshold for value in values)


# --- two-means -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(any_values)
def test_two_means_flags_the_exact_optimum(values):
    if len(set(values)) < 2:
        with pytest.raises(NotEnoughData):
            two_means(values)
        return
    expected = brute_force(values, two_means_criterion(values))
    assert flagged_by(values, two_means(values)) == expected


@settings(max_examples=200, deadline=None)
@given(any_values, st.sampled_from([1, 2, 3, 5]))
def test_skipped_blocks_never_hide_the_optimum(values, block):
    # Tiny blocks exercise the bound that lets two-means skip most prefix sums on big inputs.
    if len(set(values)) < 2:
        return
    ordered = np.sort(np.asarray(values, dtype=float))
    split = thresholds._two_means_split(ordered, block=block)
    expected = brute_force(values, two_means_criterion(values))
    assert sum(expected) == len(values) - split


@pytest.mark.parametrize("seed", [0, 1])
def test_two_means_matches_brute_force_on_a_large_mixture_with_ties(seed):
    rng = np.random.default_rng(seed)
    values = np.round(np.concatenate((rng.normal(0, 1, 2700), rng.normal(3.5, 0.7, 300))), 1)
    ordered = np.sort(values)
    within = []
    for split in range(1, ordered.size):
        if ordered[split - 1] == ordered[split]:
            continue
        left, right = ordered[:split], ordered[split:]
        within.append((((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum(), split))
    best = min(w for w, _ in within)
    threshold = two_means(values)
    kept, flagged = values[values <= threshold], values[values > threshold]
    found = ((kept - kept.mean()) ** 2).sum() + ((flagged - flagged.mean()) ** 2).sum()
    assert found <= best * (1 + 1e-9)


def test_two_means_separates_a_clear_mixture_at_its_gap():
    rng = np.random.default_rng(3)
    inliers, outliers = rng.uniform(0, 1, 900), rng.uniform(10, 11, 100)
    threshold = two_means(np.concatenate((inliers, outliers)))
    assert inliers.max() < threshold < outliers.min()
    assert threshold == pytest.approx((inliers.max() + outliers.min()) / 2)


def test_two_means_tie_flags_fewer_values_and_never_splits_equal_values():
    # {0} | {1, 2} and {0, 1} | {2} have the same within-SS: the smaller flagged group wins.
    assert two_means([0, 1, 2]) == 1.5
    assert two_means([2, 1, 0]) == 1.5
    values = [0, 0, 0, 5, 5, 5, 5, 6]
    threshold = two_means(values)
    assert threshold == 2.5  # all the 5s go together
    assert two_means([1.0, 1.0, 2.0]) == 1.5


def test_two_means_threshold_between_adjacent_floats_still_flags_the_upper_one():
    low = 1.0
    high = float(np.nextafter(low, 2.0))
    threshold = two_means([low, high])
    assert low <= threshold < high


def test_two_means_survives_extreme_magnitudes():
    assert two_means([-1e308, 1e308]) == 0.0
    tiny = [1e-310, 2e-310, 3e-310, 1e-305]
    assert flagged_by(tiny, two_means(tiny)) == (False, False, False, True)
    huge = [1e200, 2e200, 3e200, 9e200]
    assert flagged_by(huge, two_means(huge)) == (False, False, False, True)
    fit = fit_threshold(huge, min_samples=1)
    assert fit.n_flagged == 1 and fit.details["within_ss"] is None  # beyond the float range
    json.dumps(fit.to_dict(), allow_nan=False)


def test_two_means_needs_two_distinct_values():
    with pytest.raises(NotEnoughData) as caught:
        two_means([3.0, 3.0, 3.0])
    assert caught.value.got == 1 and caught.value.needed == 2
    assert "all 3 values are equal" in str(caught.value)
    with pytest.raises(NotEnoughData):
        two_means([7])
    assert isinstance(caught.value, MonitorError)


# --- proportion ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(any_values, st.floats(0.01, 0.99))
def test_proportion_flags_the_achievable_count_closest_to_p_n(values, p):
    if len(values) * min(p, 1 - p) < 1:
        with pytest.raises(NotEnoughData):
            proportion(values, p)
        return
    expected = brute_force(values, proportion_criterion(values, p))
    assert flagged_by(values, proportion(values, p)) == expected


def test_proportion_counts_and_tie_rules():
    values = np.arange(1.0, 101.0)
    threshold = proportion(values, 0.05)
    assert threshold == 95.5 and (values > threshold).sum() == 5
    assert proportion(np.arange(1.0, 11.0), 0.25) == 8.5  # 2.5 expected: 2 and 3 tie, 2 wins
    # The 2s stay together: 1 or 9 flagged, both 4 away from 5; the smaller count wins.
    assert proportion([1, 2, 2, 2, 2, 2, 2, 2, 2, 3], 0.5) == 2.5
    assert proportion([1, 1, 2, 2, 2, 2, 2, 2, 2, 3], 0.5) == 1.5  # 1 or 8 flagged: 8 is closer
    assert proportion([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 0.1) == 1.0  # nothing can be flagged


def test_proportion_refuses_fewer_values_than_one_expected_ood():
    with pytest.raises(NotEnoughData) as caught:
        proportion(np.arange(10.0), 0.05)
    assert (caught.value.got, caught.value.needed) == (10, 20)
    assert proportion(np.arange(20.0), 0.05) == 18.5


@pytest.mark.parametrize("p", [0, 1, -0.1, 1.5, float("nan"), float("inf"), True, "0.05", None])
def test_proportion_refuses_p_outside_the_open_unit_interval(p):
    with pytest.raises(InputError, match=r"^p: "):
        proportion(np.arange(100.0), p)


# --- invariances ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-20, 20), min_size=2, max_size=25),
    st.floats(0.01, 100.0),
    st.floats(-1000.0, 1000.0),
    st.data(),
)
def test_shifting_and_scaling_moves_every_threshold_the_same_way(values, scale, shift, data):
    values = np.asarray(values, dtype=float)
    moved = values * scale + shift
    labels = np.asarray(data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=values.size, max_size=values.size)))
    p = data.draw(st.floats(0.05, 0.5))
    cases = [(lambda v: proportion(v, p), values.size * p >= 1)]
    if len(set(values.tolist())) >= 2:
        cases.append((two_means, True))
        cases.append((lambda v: fit_threshold(v, labels=labels, min_samples=1).threshold, True))
    if values.size * p >= 1:
        cases.append((lambda v: fit_threshold(v, "proportion", labels, p=p, min_samples=1).threshold, True))
    for fit, possible in cases:
        if not possible:
            continue
        before, after = fit(values), fit(moved)
        assert np.array_equal(values > before, moved > after)
        assert after == pytest.approx(before * scale + shift, abs=1e-9 * (abs(shift) + scale * 21))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-20, 20), min_size=20, max_size=40), st.randoms(use_true_random=False), st.data())
def test_permuting_the_values_changes_nothing(values, random, data):
    labels = data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=len(values), max_size=len(values)))
    order = list(range(len(values)))
    random.shuffle(order)
    shuffled = [values[i] for i in order]
    shuffled_labels = [labels[i] for i in order]
    if len(set(values)) >= 2:
        assert two_means(values) == two_means(shuffled)
        assert (
            fit_threshold(values, labels=labels).to_dict()
            == fit_threshold(shuffled, labels=shuffled_labels).to_dict()
        )
    assert proportion(values, 0.1) == proportion(shuffled, 0.1)
    assert (
        fit_threshold(values, "proportion", labels, p=0.1).to_dict()
        == fit_threshold(shuffled, "proportion", shuffled_labels, p=0.1).to_dict()
    )


# --- the label rule ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(any_values, st.data())
def test_labels_first_minimise_mistakes_then_the_within_ss(values, data):
    labels = data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=len(values), max_size=len(values)))
    if len(set(values)) < 2:
        return
    fit = fit_threshold(values, "two-means", labels, min_samples=1)
    expected = brute_force(values, two_means_criterion(values), labels)
    assert flagged_by(values, fit.threshold) == expected
    assert fit.n_flagged == sum(expected)
    assert fit.mistakes == labelled_mistakes(expected, labels)
    assert fit.n_labelled_ood == labels.count(1) and fit.n_labelled_id == labels.count(0)
    assert fit.used_labels == any(label != -1 for label in labels)
    assert float(fit.details["within_ss"]) == pytest.approx(float(within_ss(values, expected)), rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(any_values, st.floats(0.04, 0.96), st.data())
def test_labels_first_minimise_mistakes_then_the_distance_to_the_share(values, p, data):
    labels = data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=len(values), max_size=len(values)))
    if len(values) * min(p, 1 - p) < 1:
        return
    fit = fit_threshold(values, "proportion", labels, p=p, min_samples=1)
    expected = brute_force(values, proportion_criterion(values, p), labels)
    assert flagged_by(values, fit.threshold) == expected
    assert fit.false_alarms == sum(1 for m, l in zip(expected, labels) if m and l == 0)
    assert fit.misses == sum(1 for m, l in zip(expected, labels) if not m and l == 1)


def test_an_id_label_on_a_false_alarm_raises_the_threshold_above_it():
    rng = np.random.default_rng(7)
    values = np.concatenate((rng.normal(0, 1, 950), rng.normal(6, 1, 50)))
    unsupervised = fit_threshold(values, "proportion", p=0.1)
    labels = np.full(values.size, -1)
    false_alarm = int(np.argmax(np.where(values < 4, values, -np.inf)))  # a flagged inlier
    assert values[false_alarm] > unsupervised.threshold
    labels[false_alarm] = 0
    refit = fit_threshold(values, "proportion", labels, p=0.1)
    assert refit.threshold >= values[false_alarm]
    assert refit.mistakes == 0 and refit.false_alarms == 0
    assert refit.details["unsupervised_threshold"] == unsupervised.threshold
    assert "labels: 0 OOD, 1 ID, 0 on the wrong side" in refit.explain()
    assert "without labels it would be" in refit.explain()


def test_an_ood_label_below_the_threshold_lowers_it_when_no_id_label_objects():
    values = np.concatenate((np.linspace(0, 1, 90), np.linspace(5, 6, 10)))
    labels = np.full(values.size, -1)
    labels[85] = 1  # operators found OOD among the high inliers
    fit = fit_threshold(values, "two-means", labels)
    assert fit.threshold < values[85] and fit.misses == 0
    labels[88] = 0  # ... but an ID sample above it: one mistake is unavoidable, the fewest is kept
    fit = fit_threshold(values, "two-means", labels)
    assert fit.mistakes == 1


def test_all_unknown_labels_are_no_labels():
    values = np.arange(100.0)
    plain = fit_threshold(values, "proportion", p=0.05)
    unknown = fit_threshold(values, "proportion", np.full(100, -1), p=0.05)
    assert plain.to_dict() == unknown.to_dict()
    assert not unknown.used_labels


# --- the result and the not-enough-data rule -----------------------------------------------


def test_the_result_says_what_it_used_and_stores_as_json():
    values = np.concatenate((np.zeros(30), np.ones(10) * 5, np.arange(10.0) / 10))
    labels = np.r_[np.full(30, 0), np.full(10, 1), np.full(10, -1)]
    fit = fit_threshold(values, "proportion", labels, p=0.2, min_samples=25)
    stored = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert stored["method"] == "proportion"
    assert stored["parameters"] == {"p": 0.2, "min_samples": 25}
    assert stored["counts"] == {
        "n": 50, "n_flagged": 10, "n_labelled_ood": 10, "n_labelled_id": 30, "n_unlabelled": 10,
        "false_alarms": 0, "misses": 0, "mistakes": 0,
    }
    assert stored["used_labels"] is True
    assert stored["threshold"] == float(fit) == fit.threshold
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.threshold = 0.0  # type: ignore[misc]


def test_too_few_values_is_not_enough_data_with_the_counts():
    with pytest.raises(NotEnoughData) as caught:
        fit_threshold(np.arange(12.0), "two-means")
    error = caught.value
    assert (error.got, error.needed, error.method) == (12, thresholds.DEFAULT_MIN_SAMPLES, "two-means")
    assert error.counts == {"got": 12, "needed": 20}
    assert "not enough data for two-means: 12 values, need at least 20" in str(error)
    assert error.to_dict() == {
        "method": "two-means", "what": "values", "got": 12, "needed": 20, "reason": str(error)
    }
    assert fit_threshold(np.arange(12.0), "two-means", min_samples=12).n == 12


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([], r"^values: is empty"),
        ([1.0, float("nan"), 2.0], r"^values: 1 of 3 values are NaN or infinite \(first at index 1\)"),
        ([1.0, 2.0, float("inf")], r"^values: 1 of 3 values are NaN or infinite \(first at index 2\)"),
        ([[1.0, 2.0], [3.0, 4.0]], r"^values: expected a 1-D sequence"),
        (["a", "b"], r"^values: expected numbers"),
        ([1 + 2j, 3j], r"^values: expected real numbers"),
    ],
)
def test_bad_values_are_refused_with_the_argument_named(values, match):
    for fit in (two_means, lambda v: proportion(v, 0.5), lambda v: fit_threshold(v, min_samples=1)):
        with pytest.raises(InputError, match=match):
            fit(values)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([0, 1], r"^labels: has 2 entries but there are 3 values"),
        ([0, 1, 2], r"^labels: entries must be 1 \(OOD\), 0 \(ID\) or -1 \(unknown\); index 2 holds"),
        ([0, 1, float("nan")], r"^labels: entries must be"),
        ([0.5, 1, 0], r"^labels: entries must be"),
        (["OOD", "ID", "ID"], r"^labels: expected 1 \(OOD\)"),
        ([[0, 1, 0]], r"^labels: expected a 1-D sequence"),
    ],
)
def test_bad_labels_are_refused_with_the_argument_named(labels, match):
    with pytest.raises(InputError, match=match):
        fit_threshold([1.0, 2.0, 3.0], labels=labels, min_samples=1)


def test_bad_method_and_parameters_are_refused():
    values = np.arange(100.0)
    with pytest.raises(InputError, match=r"^method: unknown method 'otsu'"):
        fit_threshold(values, "otsu")
    with pytest.raises(InputError, match=r"^p: method 'proportion' needs"):
        fit_threshold(values, "proportion")
    with pytest.raises(InputError, match=r"^p: is not a parameter of method 'two-means'"):
        fit_threshold(values, "two-means", p=0.1)
    with pytest.raises(InputError, match=r"^q: method 'extreme-value' needs"):
        fit_threshold(values, "extreme-value")
    with pytest.raises(InputError, match=r"^min_samples: expected a positive integer"):
        fit_threshold(values, min_samples=0)
    with pytest.raises(InputError, match=r"^p: must lie strictly between 0 and 1"):
        fit_threshold(values, "proportion", p=1.0)


@pytest.mark.parametrize("n", [8191, 8192, 8193, 8194, 16385, 40000])
def test_two_means_with_skipped_blocks_agrees_with_scoring_every_split(n):
    # fit_threshold scores every split; two_means skips blocks: around block edges they must agree.
    rng = np.random.default_rng(n)
    values = np.round(np.concatenate((rng.normal(0, 1, n - n // 10), rng.normal(5, 2, n // 10))), 2)
    assert two_means(values) == fit_threshold(values, "two-means").threshold


def test_thresholds_and_metrics_import_without_torch():
    # The store, web and job processes import these; torch would cost them seconds and memory.
    import subprocess
    import sys

    code = "import sys, monitor.thresholds, monitor.metrics; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
