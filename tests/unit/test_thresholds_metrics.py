"""Evaluation metrics (OOD positive) against scikit-learn and brute force, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from monitor.errors import InputError
from monitor.metrics import detection_error, fpr_at_tpr, roc_auc, roc_curve
from monitor.thresholds import NotEnoughData

scored_labels = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6), min_size=n, max_size=n),  # few distinct scores: many ties
        st.lists(st.sampled_from([-1, 0, 1]), min_size=n, max_size=n),
    )
)


def operating_points(scores, labels):
    """(TPR, FPR) of every threshold: flag scores >= t for t at each score, and flag nothing."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    scores, labels = scores[labels != -1], labels[labels != -1]
    ood, idd = labels == 1, labels == 0
    points = [(0.0, 0.0)]
    for cut in np.unique(scores):
        flagged = scores >= cut
        points.append(((flagged & ood).sum() / ood.sum(), (flagged & idd).sum() / idd.sum()))
    return points


def both_kinds(labels):
    return 1 in labels and 0 in labels


@settings(max_examples=200, deadline=None)
@given(scored_labels)
def test_auroc_matches_scikit_learn_with_ties(case):
    scores, labels = case
    if not both_kinds(labels):
        with pytest.raises(NotEnoughData):
            roc_auc(scores, labels)
        return
    known = np.asarray(labels) != -1
    expected = roc_auc_score(np.asarray(labels)[known], np.asarray(scores, float)[known])
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(scored_labels, st.sampled_from([0.95, 0.5, 0.8, 1.0]))
def test_fpr_at_tpr_is_the_lowest_fpr_reaching_the_tpr(case, rate):
    scores, labels = case
    if not both_kinds(labels):
        return
    reachable = [fpr for tpr, fpr in operating_points(scores, labels) if tpr >= rate - 1e-12]
    assert fpr_at_tpr(scores, labels, rate) == pytest.approx(min(reachable), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(scored_labels)
def test_detection_error_is_the_best_balanced_error(case):
    scores, labels = case
    if not both_kinds(labels):
        return
    expected = min(0.5 * (1 - tpr) + 0.5 * fpr for tpr, fpr in operating_points(scores, labels))
    assert detection_error(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_fpr_at_95_counts_true_positives_exactly():
    # 20 OOD: 95 % is exactly 19 of them, which float rounding of 0.95 * 20 must not miss.
    scores = np.r_[np.arange(20.0) + 100, np.arange(100.0)]
    labels = np.r_[np.ones(20), np.zeros(100)]
    scores[0] = 50.5  # one OOD sample hides among the ID ones: catching it costs 49 % FPR
    assert fpr_at_tpr(scores, labels) == 0.0
    assert fpr_at_tpr(scores, labels, 1.0) == pytest.approx(0.49)


def test_perfect_and_tied_indicators():
    labels = [0, 0, 1, 1]
    assert roc_auc([0, 1, 2, 3], labels) == 1.0
    assert detection_error([0, 1, 2, 3], labels) == 0.0
    assert fpr_at_tpr([0, 1, 2, 3], labels) == 0.0
    assert roc_auc([1, 1, 1, 1], labels) == 0.5  # a constant indicator is chance, not perfect
    assert detection_error([1, 1, 1, 1], labels) == 0.5
    assert fpr_at_tpr([1, 1, 1, 1], labels) == 1.0
    assert roc_auc([3, 2, 1, 0], labels) == 0.0


def test_roc_curve_runs_from_nothing_to_everything_flagged():
    curve = roc_curve([0.1, 0.4, 0.4, 0.8, 0.3], [0, 1, 0, 1, -1])
    assert (curve.n_ood, curve.n_id) == (2, 2)
    assert curve.fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert curve.tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert curve.thresholds.tolist() == [np.inf, 0.8, 0.4, 0.1]


def test_bad_inputs_are_refused():
    with pytest.raises(NotEnoughData, match="OOD labels"):
        roc_auc([1, 2, 3], [0, 0, -1])
    with pytest.raises(NotEnoughData, match="ID labels"):
        detection_error([1, 2, 3], [1, 1, 1])
    with pytest.raises(InputError, match=r"^labels: has 2 entries but there are 3 values"):
        roc_auc([1, 2, 3], [0, 1])
    with pytest.raises(InputError, match=r"^scores: 1 of 3 values are NaN"):
        roc_auc([1, float("nan"), 3], [0, 1, 0])
    with pytest.raises(InputError, match=r"^tpr: expected a rate in \(0, 1\]"):
        fpr_at_tpr([1, 2], [0, 1], tpr=95)
