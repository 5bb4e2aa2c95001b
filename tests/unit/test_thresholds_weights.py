"""1C-Sum re-weighting from operator labels (paper section 5): weights the Scorer can apply."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from monitor.errors import InputError
from monitor.metrics import roc_auc
from monitor.thresholds import MIN_LABELS_PER_CLASS, fit_summary_weights

MEMBERS = ("MP", "ANG++", "DMS")


def labelled_stream(n_id=300, n_ood=60, seed=0):
    """ANG++ separates ID from OOD, MP is noise, DMS separates weakly; raw scales differ widely."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_id, int), np.ones(n_ood, int)]
    ood = labels == 1
    indicators = {
        "MP": rng.uniform(0, 0.9, labels.size),
        "ANG++": np.where(ood, rng.normal(0.8, 0.05, labels.size), rng.normal(0.5, 0.05, labels.size)),
        "DMS": np.where(ood, rng.normal(130, 40, labels.size), rng.normal(100, 40, labels.size)),
    }
    mean = {"MP": 0.7, "ANG++": 0.9, "DMS": 500.0}  # noise statistics: far from the real data
    std = {"MP": 0.05, "ANG++": 0.01, "DMS": 80.0}
    return indicators, labels, mean, std


def standardised(indicators, mean, std):
    return {name: (np.asarray(values) - mean[name]) / std[name] for name, values in indicators.items()}


def test_enough_labels_give_weights_that_rank_better_than_the_uniform_sum():
    indicators, labels, mean, std = labelled_stream()
    result = fit_summary_weights(indicators, labels, mean, std)
    assert result.used_labels
    assert set(result.weights) == set(MEMBERS)
    assert sum(abs(w) for w in result.weights.values()) == pytest.approx(len(MEMBERS))
    z = standardised(indicators, mean, std)
    # The separating member dominates once its much smaller noise scale is accounted for.
    contribution = {name: abs(result.weights[name]) * np.std(z[name]) for name in MEMBERS}
    assert max(contribution, key=contribution.get) == "ANG++"
    assert result.auroc_fitted > result.auroc_uniform
    assert result.auroc_fitted == pytest.approx(roc_auc(result.summary(indicators, mean, std), labels))
    assert result.auroc_uniform == pytest.approx(roc_auc(sum(z.values()), labels))
    assert "fitted on 60 OOD and 300 ID labels" in result.reason
    json.dumps(result.to_dict(), allow_nan=False)


def test_weights_reproduce_the_balanced_logistic_model_in_the_scorers_standardisation():
    indicators, labels, mean, std = labelled_stream(seed=1)
    result = fit_summary_weights(indicators, labels, mean, std, regularisation=0.5)
    raw = np.column_stack([indicators[name] for name in MEMBERS])
    features = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    model = LogisticRegression(C=0.5, class_weight="balanced", max_iter=1000).fit(features, labels)
    summary = result.summary(indicators, mean, std) + result.offset
    ratio = summary / model.decision_function(features)
    assert np.all(ratio > 0) and np.allclose(ratio, ratio[0], rtol=1e-6)
    assert np.array_equal(summary > 0, model.predict(features) == 1)


def test_the_fitted_summary_does_not_depend_on_the_noise_statistics():
    # The Scorer's mu, sigma only change the coordinates: the re-weighted summary is the same
    # function of the raw indicators, up to the positive normalising factor.
    indicators, labels, mean, std = labelled_stream(seed=2)
    other_mean = {name: value * 0.3 - 1 for name, value in mean.items()}
    other_std = {name: value * 7 for name, value in std.items()}
    first = fit_summary_weights(indicators, labels, mean, std)
    second = fit_summary_weights(indicators, labels, other_mean, other_std)
    a = first.summary(indicators, mean, std) + first.offset
    b = second.summary(indicators, other_mean, other_std) + second.offset
    ratio = a / b
    assert np.all(ratio > 0) and np.allclose(ratio, ratio[0], rtol=1e-6)


def test_too_few_labels_keep_the_uniform_weights_and_say_so():
    indicators, labels, mean, std = labelled_stream()
    labels = labels.copy()
    labels[np.flatnonzero(labels == 1)[MIN_LABELS_PER_CLASS - 1 :]] = -1  # 9 OOD left
    result = fit_summary_weights(indicators, labels, mean, std)
    assert not result.used_labels
    assert result.weights == {name: 1.0 for name in MEMBERS} and result.offset == 0.0
    assert result.reason == (
        "kept the uniform 1C-Sum weights: 9 OOD and 300 ID labels, re-weighting needs at least 10 of each"
    )
    assert (result.n_labelled_ood, result.n_labelled_id) == (9, 300)
    assert fit_summary_weights(indicators, labels, mean, std, min_per_class=9).used_labels


def test_a_member_constant_on_the_labels_gets_weight_zero():
    indicators, labels, mean, std = labelled_stream(seed=3)
    indicators["MP"] = np.full(labels.size, 0.25)
    result = fit_summary_weights(indicators, labels, mean, std)
    assert result.used_labels and result.weights["MP"] == 0.0
    assert "weight 0 for members constant on the labelled samples: MP" in result.reason


def test_bad_inputs_are_refused_with_the_argument_named():
    indicators, labels, mean, std = labelled_stream()
    with pytest.raises(InputError, match=r"^indicators: 'ODIN' is not a 1C-Sum member"):
        fit_summary_weights({**indicators, "ODIN": indicators["MP"]}, labels, {**mean, "ODIN": 0}, {**std, "ODIN": 1})
    with pytest.raises(InputError, match=r"^indicators: unknown indicator 'ANGLE'"):
        fit_summary_weights({"ANGLE": indicators["MP"]}, labels, mean, std)
    with pytest.raises(InputError, match=r"^indicators\['DMS'\]: has 10 values, 'MP' has 360"):
        fit_summary_weights({**indicators, "DMS": indicators["DMS"][:10]}, labels, mean, std)
    with pytest.raises(InputError, match=r"^std: has no entry for 1C-Sum member 'DMS'"):
        fit_summary_weights(indicators, labels, mean, {"MP": 1.0, "ANG++": 1.0})
    with pytest.raises(InputError, match=r"^std\['MP'\]: must be positive"):
        fit_summary_weights(indicators, labels, mean, {**std, "MP": 0.0})
    with pytest.raises(InputError, match=r"^labels: has 5 entries"):
        fit_summary_weights(indicators, labels[:5], mean, std)
    with pytest.raises(InputError, match=r"^regularisation: expected a positive finite number"):
        fit_summary_weights(indicators, labels, mean, std, regularisation=0)
    with pytest.raises(InputError, match=r"^indicators: expected a non-empty mapping"):
        fit_summary_weights({}, labels, mean, std)
