"""The bench's comparison of one global threshold with thresholds per predicted class: counts by
hand on a tiny stream, the predicted classes kept aligned through the stream's shuffle, and the
effect the comparison exists to show on a stream where one class sits higher than the others."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.evaluation import class_thresholds as ct
from monitor.names import SUMMARY


def test_judged_counts_by_hand():
    # Ten samples: classes 0, 1, 2; OOD are the last two. Flags on samples 0, 3, 4, 5 and 8.
    predicted = np.array([0, 0, 0, 1, 1, 1, 2, 2, 1, 2])
    is_ood = np.array([False] * 8 + [True, True])
    flagged = np.array([True, False, False, True, True, False, False, False, True, False])
    judged = ct._judged(flagged, predicted, is_ood, classes=[0, 1, 2])
    assert judged["id_flagged_share"] == 3 / 8
    assert judged["ood_caught_share"] == 1 / 2
    assert judged["precision"] == 1 / 4
    assert judged["flagged_share"] == 4 / 10
    assert judged["id_flagged_share_per_class"] == {0: 1 / 3, 1: 2 / 3, 2: 0.0}
    shares = np.array([1 / 3, 2 / 3, 0.0])
    assert judged["class_share_cv"] == pytest.approx(shares.std() / shares.mean())
    assert (judged["class_share_max"], judged["class_share_min"]) == (2 / 3, 0.0)
    assert judged["top3_classes_share_of_id_flags"] == 1.0  # three classes hold every flag


def test_predicted_classes_stay_with_their_samples_through_the_shuffle():
    rng = np.random.default_rng(0)
    id_predicted = rng.integers(0, 10, 500)
    far_predicted = {"A": rng.integers(0, 10, 80), "B": rng.integers(0, 10, 80)}
    # Each value encodes its own class, so a misaligned class would show.
    id_scores = {SUMMARY: id_predicted + rng.random(500) * 0.3}
    ood_scores = {name: {SUMMARY: p + 0.9 + rng.random(80) * 0.05} for name, p in far_predicted.items()}
    result = ct.stream_comparison(id_scores, id_predicted, ood_scores, far_predicted,
                                  ood_share=0.1, seed=3, min_class_samples=20)
    assert result["id"] == 500 and sum(result["ood_per_set"].values()) == 56
    assert sum(result["id_per_predicted_class"].values()) == 500
    assert sum(result["ood_per_predicted_class"].values()) == 56
    # Inside each class the OOD values (c + 0.9 .. c + 0.95) lie far above the ID ones (c .. c + 0.3): only
    # aligned classes let own two-means thresholds separate them perfectly.
    entry = result["indicators"][SUMMARY]["two_means"]["per_class"]
    assert entry["classes_with_own_threshold"] == list(range(10))
    assert entry["id_flagged_share"] == 0.0 and entry["ood_caught_share"] == 1.0


def skewed_stream(seed=0):
    """Class 1 (a class the model is unsure of) has higher ID values than class 0; 100 OOD samples
    (2.4 %) far above both, spread over the two classes."""
    rng = np.random.default_rng(seed)
    n = 2000
    predicted = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int), rng.integers(0, 2, 100)]
    values = np.r_[rng.normal(0, 1, n), rng.normal(2, 1, n), rng.normal(8, 1, 100)]
    is_ood = np.r_[np.zeros(2 * n, dtype=bool), np.ones(100, dtype=bool)]
    return values, predicted, is_ood


def test_per_class_thresholds_even_out_the_id_flags_of_a_skewed_stream():
    values, predicted, is_ood = skewed_stream()
    # An expected share of 10 % where 2.4 % is OOD: most flags are false alarms.
    result = ct.compare_thresholds(values, predicted, is_ood, "proportion", ood_share=0.1,
                                   min_class_samples=100, classes=[0, 1])
    glob, own = result["global"], result["per_class"]
    # One threshold: class 1's ID samples take nearly all false alarms.
    assert glob["id_flagged_share_per_class"][1] > 10 * glob["id_flagged_share_per_class"][0]
    # Own thresholds: each class spends its 10 % on its own tail, about 7.5 % of its ID samples.
    for share in own["id_flagged_share_per_class"].values():
        assert share == pytest.approx(0.075, abs=0.01)
    assert own["class_share_cv"] < 0.1 < 0.9 < glob["class_share_cv"]
    assert own["id_flagged_share"] == pytest.approx(glob["id_flagged_share"], abs=0.005)
    assert own["classes_with_own_threshold"] == [0, 1] and own["fallbacks"] == {}
    assert own["thresholds"]["per_class"]["0"] < own["thresholds"]["per_class"]["1"]
    # The OOD values sit far above both classes: both catch nearly all of them.
    assert glob["ood_caught_share"] > 0.95 and own["ood_caught_share"] > 0.95


def test_nan_values_are_never_flagged_and_an_unfittable_indicator_reports_why():
    values, predicted, is_ood = skewed_stream()
    values[:10] = np.nan
    result = ct.compare_thresholds(values, predicted, is_ood, "two-means", ood_share=0.1,
                                   min_class_samples=100, classes=[0, 1])
    assert result["global"]["id_flagged_share"] < 1.0
    constant = ct.compare_thresholds(np.ones(50), np.zeros(50, dtype=int), np.zeros(50, dtype=bool), "two-means",
                                     ood_share=0.1, min_class_samples=10, classes=[0])
    assert "all 50 values are equal" in constant["error"]


def test_report_files_say_the_figures(tmp_path):
    values, predicted, is_ood = skewed_stream()
    id_scores = {SUMMARY: values[~is_ood]}
    ood_scores = {"far": {SUMMARY: values[is_ood]}}
    comparison = ct.stream_comparison(id_scores, predicted[~is_ood], ood_scores, {"far": predicted[is_ood]},
                                      ood_share=0.02, seed=0, min_class_samples=100, class_names=["calm", "unsure"])
    paths = ct.write({"class_thresholds": comparison, "command": "ood-monitor bench ood"}, tmp_path)
    assert [p.name for p in paths] == ["class_thresholds.json", "class_thresholds.md", "class_thresholds.png"]
    data = json.loads((tmp_path / "class_thresholds.json").read_text())
    glob = data["indicators"][SUMMARY]["proportion"]["global"]
    assert glob["id_flagged_share"] == comparison["indicators"][SUMMARY]["proportion"]["global"]["id_flagged_share"]
    text = (tmp_path / "class_thresholds.md").read_text()
    assert "| 1C-Sum | proportion | global | " + ct._pct(glob["id_flagged_share"]) in text
    assert "| thresholds | calm | unsure |" in text
    assert "| 1C-Sum | two-means, 5% labelled | global | " in text
    assert data["labelled"]["id"] + data["labelled"]["ood"] > 0
    assert "Regenerate: `ood-monitor bench ood`" in text
    assert (tmp_path / "class_thresholds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "per class ID flagged" in ct.console_summary(comparison)
