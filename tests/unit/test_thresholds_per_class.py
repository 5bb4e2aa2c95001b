"""Thresholds per predicted class: own thresholds where a class has enough samples, the global
one for the rest, labels steering their own class, and the judge that applies them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.errors import InputError
from monitor.thresholds import (
    ClassThresholds,
    NotEnoughData,
    fit_class_thresholds,
    fit_threshold,
)


def two_classes():
    """Class 0: the values 1..30; class 1: five values far above, 100..104."""
    values = np.r_[np.arange(1.0, 31.0), np.arange(100.0, 105.0)]
    predicted = np.r_[np.zeros(30, dtype=int), np.ones(5, dtype=int)]
    return values, predicted


def test_a_class_with_enough_samples_gets_its_own_threshold_and_the_rest_the_global_one():
    values, predicted = two_classes()
    fit = fit_class_thresholds(values, predicted, "proportion", p=0.1, min_class_samples=20)
    # Class 0: 10 % of 30 values is 3 flagged, 28 29 30, so the cut lies midway between 27 and 28.
    assert fit.thresholds.per_class == {0: 27.5}
    # Global: 10 % of 35 is 3.5; 3 and 4 are equally close, the smaller wins: 102 103 104.
    assert fit.thresholds.global_threshold == 101.5
    assert fit.fallbacks == {1: "5 samples, an own threshold needs at least 20"}
    assert fit.class_counts == {0: 30, 1: 5}
    # Flagged: 28 29 30 by their own threshold, 102 103 104 by the global one.
    assert fit.n_flagged == 6
    assert fit.thresholds.judge(values, predicted).sum() == 6
    assert fit.counts()["global_n_flagged"] == 3
    assert fit.counts()["classes_with_own_threshold"] == 1
    text = fit.explain()
    assert "own thresholds for 1 of 2 classes: class 0 27.5 (3/30)" in text
    assert "class 1: 5 samples, an own threshold needs at least 20" in text


def test_an_own_threshold_is_the_fit_of_that_class_alone():
    rng = np.random.default_rng(3)
    predicted = rng.integers(0, 4, 2000)
    values = rng.normal(size=2000) + 0.7 * predicted  # class 3 sits highest
    fit = fit_class_thresholds(values, predicted, "two-means", min_class_samples=100)
    assert sorted(fit.classes) == [0, 1, 2, 3]
    for cls, own in fit.classes.items():
        assert own.threshold == fit_threshold(values[predicted == cls], "two-means", min_samples=100).threshold
    assert fit.overall.threshold == fit_threshold(values, "two-means").threshold


def test_too_few_samples_in_several_classes_keeps_them_on_the_global_threshold():
    rng = np.random.default_rng(7)
    sizes = {0: 400, 1: 99, 2: 100, 5: 3}
    predicted = np.concatenate([np.full(size, cls) for cls, size in sizes.items()])
    values = rng.normal(size=predicted.size)
    fit = fit_class_thresholds(values, predicted, "proportion", p=0.05, min_class_samples=100)
    assert sorted(fit.classes) == [0, 2]
    assert fit.fallbacks == {
        1: "99 samples, an own threshold needs at least 100",
        5: "3 samples, an own threshold needs at least 100",
    }
    judged = fit.thresholds
    assert judged.threshold_of(1) == judged.threshold_of(5) == judged.threshold_of(9) == fit.overall.threshold
    assert judged.judged_by(1) is None and judged.judged_by(2) == 2


def test_a_class_whose_own_fit_is_refused_falls_back_with_the_reason():
    values = np.r_[np.linspace(0, 1, 50), np.full(40, 0.5)]  # class 1: forty equal values
    predicted = np.r_[np.zeros(50, dtype=int), np.ones(40, dtype=int)]
    fit = fit_class_thresholds(values, predicted, "two-means", min_class_samples=30)
    assert list(fit.classes) == [0]
    assert "all 40 values are equal" in fit.fallbacks[1]


def test_no_class_large_enough_gives_the_global_threshold_alone():
    values, predicted = two_classes()
    fit = fit_class_thresholds(values, predicted, "proportion", p=0.1, min_class_samples=31)
    assert fit.classes == {}
    assert fit.thresholds == ClassThresholds(fit.overall.threshold)
    assert fit.n_flagged == fit.overall.n_flagged == 3


def test_too_few_values_overall_refuses_the_whole_fit():
    with pytest.raises(NotEnoughData, match="12 values, need at least 20"):
        fit_class_thresholds(np.arange(12.0), np.zeros(12, dtype=int), min_class_samples=5)


def test_labels_of_a_class_steer_its_own_threshold_only():
    values, predicted = two_classes()
    values = np.r_[values, np.arange(200.0, 230.0)]  # class 2: thirty values
    predicted = np.r_[predicted, np.full(30, 2)]
    unlabelled = fit_class_thresholds(values, predicted, "proportion", p=0.1, min_class_samples=20)
    assert unlabelled.thresholds.per_class == {0: 27.5, 2: 226.5}
    labels = np.full(values.size, -1)
    labels[values == 28.0] = 0  # an operator says 28 (flagged in class 0) is in-distribution
    labels[values == 29.0] = 0
    steered = fit_class_thresholds(values, predicted, "proportion", p=0.1, labels=labels, min_class_samples=20)
    assert steered.thresholds.per_class == {0: 29.5, 2: 226.5}
    assert steered.classes[0].used_labels and not steered.classes[2].used_labels
    assert steered.classes[0].n_labelled_id == 2


def test_fit_records_and_round_trips_as_json():
    values, predicted = two_classes()
    fit = fit_class_thresholds(values, predicted, "proportion", p=0.1, min_class_samples=20)
    data = json.loads(json.dumps(fit.to_dict()))
    assert data["thresholds"] == {"global": 101.5, "per_class": {"0": 27.5}}
    assert data["fallbacks"] == {"1": "5 samples, an own threshold needs at least 20"}
    assert ClassThresholds.from_dict(data["thresholds"]) == fit.thresholds


# --- the judge -----------------------------------------------------------------------------


def test_judge_uses_the_threshold_of_each_samples_predicted_class():
    thresholds = ClassThresholds(1.0, {2: 0.5, 0: 3.0})
    assert list(thresholds.per_class) == [0, 2]  # kept sorted
    values = [2.0, 2.0, 2.0, 0.6, 0.6, np.nan, np.inf]
    predicted = [0, 1, 2, 2, 1, 1, 0]
    assert thresholds.judge(values, predicted).tolist() == [False, True, True, True, False, False, True]
    assert thresholds.thresholds(predicted).tolist() == [3.0, 1.0, 0.5, 0.5, 1.0, 1.0, 3.0]
    assert thresholds.describe(2) == "the threshold of predicted class 2, 0.5"
    assert thresholds.describe(2, "Pullover") == "the threshold of predicted Pullover, 0.5"
    assert thresholds.describe(7) == "the global threshold 1"


def test_a_single_threshold_needs_no_classes():
    assert ClassThresholds(0.5).judge([0.4, 0.6, np.nan]).tolist() == [False, True, False]
    assert ClassThresholds(0.5).judge([]).tolist() == []


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ClassThresholds(float("nan")), "global_threshold: expected a finite number"),
        (lambda: ClassThresholds(1.0, {-1: 0.5}), "per_class: class indices must be integers of 0 or more"),
        (lambda: ClassThresholds(1.0, {"a": 0.5}), "per_class: class indices must be integers"),
        (lambda: ClassThresholds(1.0, {1: float("inf")}), r"per_class\[1\]: expected a finite number"),
        (lambda: ClassThresholds(1.0, {1: 0.5}).judge([1.0]), "predicted: per-class thresholds need"),
        (lambda: ClassThresholds(1.0).judge([1.0, 2.0], [0]), "predicted: has 1 entries but there are 2 values"),
        (lambda: ClassThresholds(1.0).judge([1.0], [-2]), "predicted: class indices must be 0 or more"),
        (lambda: ClassThresholds(1.0).judge([1.0], [0.5]), "predicted: expected integer class indices"),
        (lambda: ClassThresholds.from_dict({"per_class": {}}), "thresholds: expected"),
        (lambda: ClassThresholds.from_dict({"global": 1, "per_class": {"x": 2}}), "class index 'x'"),
        (lambda: fit_class_thresholds([1.0] * 30, [0] * 30, min_class_samples=0), "min_class_samples"),
        (lambda: fit_class_thresholds(np.arange(30.0), [0] * 29), "predicted: has 29 entries"),
    ],
)
def test_bad_input_names_what_is_wrong(build, message):
    with pytest.raises(InputError, match=message):
        build()
