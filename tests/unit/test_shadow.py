"""Shadow evaluation: a candidate policy judged beside the active one, against counts done by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monitor.errors import InputError
from monitor.shadow import ShadowSamples, guard_reasons, shadow_evaluation
from monitor.thresholds import ClassThresholds

# Eight samples, ids 10..17, three predicted classes. Labels: 11 ID, 12 OOD, 14 OOD, 15 ID.
IDS = [10, 11, 12, 13, 14, 15, 16, 17]
PREDICTED = [0, 0, 0, 1, 1, 1, 2, 2]
VALUES = [0.1, 0.5, 0.9, 0.2, 0.6, 1.0, 0.3, 0.7]
LABELS = [-1, 0, 1, -1, 1, 0, -1, -1]

ACTIVE = ClassThresholds(0.8)  # flags 12 (0.9) and 15 (1.0)
CANDIDATE = ClassThresholds(0.8, {0: 0.4, 1: 0.55})  # flags 11 12 (class 0), 14 15 (class 1)


def window():
    return ShadowSamples.of(IDS, PREDICTED, VALUES, labels=LABELS)


def test_counts_by_hand_on_a_small_window():
    result = shadow_evaluation(ACTIVE, CANDIDATE, window())
    assert (result.n, result.flagged_before, result.flagged_after) == (8, 2, 4)
    assert (result.share_before, result.share_after) == (0.25, 0.5)
    assert result.newly_flagged == (11, 14)
    assert result.cleared == ()
    assert result.changed == 2
    assert result.share_factor == 2.0
    per_class = {c.predicted_class: (c.n, c.flagged_before, c.flagged_after) for c in result.classes}
    assert per_class == {0: (3, 1, 2), 1: (3, 1, 2), 2: (2, 0, 0)}
    assert result.class_share(1).threshold_before == 0.8 and result.class_share(1).threshold_after == 0.55
    assert result.class_share(2).threshold_after == 0.8
    assert result.class_share(1).share_after == pytest.approx(2 / 3)
    # Before: 14 (OOD, 0.6) missed, 15 (ID, 1.0) flagged. After: 11 and 15 (ID) flagged, no OOD missed.
    labelled = result.labelled
    assert (labelled.n_ood, labelled.n_id) == (2, 2)
    assert (labelled.false_alarms_before, labelled.misses_before, labelled.before) == (1, 1, 2)
    assert (labelled.false_alarms_after, labelled.misses_after, labelled.after) == (2, 0, 2)
    assert labelled.changed_ids == (11, 14)


def test_a_candidate_that_flags_less_lists_the_cleared_samples():
    result = shadow_evaluation(CANDIDATE, ClassThresholds(0.95), window())
    assert (result.flagged_before, result.flagged_after) == (4, 1)
    assert result.newly_flagged == ()
    assert result.cleared == (11, 12, 14)
    assert result.share_factor == 4.0
    # After: only 15 (ID) flagged: one false alarm, both OOD missed.
    assert (result.labelled.false_alarms_after, result.labelled.misses_after) == (1, 2)


def test_the_candidate_may_threshold_other_values_and_nan_is_never_flagged():
    candidate_values = [5.0, 0.0, 0.0, 5.0, 0.0, np.nan, 0.0, 0.0]  # e.g. re-weighted 1C-Sum
    samples = ShadowSamples.of(IDS, PREDICTED, VALUES, candidate_values, labels=LABELS)
    result = shadow_evaluation(ACTIVE, ClassThresholds(1.0), samples)
    assert result.newly_flagged == (10, 13)
    assert result.cleared == (12, 15)
    assert result.flagged_before == result.flagged_after == 2
    assert result.share_factor == 1.0
    # After: no ID flagged (15 is NaN), both OOD missed (12 and 14 are at 0).
    assert (result.labelled.false_alarms_after, result.labelled.misses_after) == (0, 2)


def test_labelled_samples_outside_the_window_count_separately():
    labelled = ShadowSamples.of([1, 2, 3], [0, 1, 2], [0.45, 0.7, 0.85], labels=[0, 1, 1])
    result = shadow_evaluation(ACTIVE, CANDIDATE, window(), labelled)
    # Before (0.8 for all): 2 missed, 3 caught. After: 1 flagged (0.45 > 0.4, ID), 2 flagged (0.7 > 0.55).
    assert (result.labelled.n_ood, result.labelled.n_id) == (2, 1)
    assert (result.labelled.false_alarms_before, result.labelled.misses_before) == (0, 1)
    assert (result.labelled.false_alarms_after, result.labelled.misses_after) == (1, 0)
    assert result.labelled.changed_ids == (1, 2)
    assert result.flagged_after == 4  # the window is judged as before


def test_no_active_policy_flags_nothing_before():
    result = shadow_evaluation(None, CANDIDATE, window())
    assert result.flagged_before == 0 and result.flagged_after == 4
    assert result.newly_flagged == (11, 12, 14, 15)
    assert math.isinf(result.share_factor)
    assert result.class_share(0).threshold_before is None
    assert guard_reasons(result, 2.0) == []  # a first policy has nothing to be compared with


def test_an_empty_window_and_no_labels():
    result = shadow_evaluation(ACTIVE, CANDIDATE, ShadowSamples.empty())
    assert (result.n, result.flagged_before, result.flagged_after) == (0, 0, 0)
    assert result.share_before is None and result.classes == ()
    assert result.labelled.before == result.labelled.after == 0
    assert "the window holds no samples" in result.explain()
    assert "No labelled samples" in result.explain()


def test_explain_and_to_dict_say_the_same_counts():
    result = shadow_evaluation(ACTIVE, CANDIDATE, window())
    text = result.explain()
    assert "the candidate flags 4 (50.00%) where the active policy flags 2 (25.00%)" in text
    assert "2 newly flagged, 0 no longer flagged" in text
    assert "class 0 33.3% -> 66.7%" in text
    assert "2 on the wrong side before (1 ID flagged, 1 OOD missed), 2 after (2 ID flagged, 0 OOD missed)" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["newly_flagged"] == [11, 14] and data["newly_flagged_count"] == 2
    assert data["labelled"]["mistakes_before"] == 2 and data["labelled"]["false_alarms_after"] == 2
    assert data["classes"][0] == {
        "predicted_class": 0, "n": 3, "flagged_before": 1, "flagged_after": 2,
        "share_before": 1 / 3, "share_after": 2 / 3, "threshold_before": 0.8, "threshold_after": 0.4,
    }
    assert data["candidate"] == {"global": 0.8, "per_class": {"0": 0.4, "1": 0.55}}
    capped = result.to_dict(max_ids=1)
    assert capped["newly_flagged"] == [11] and capped["newly_flagged_count"] == 2


def test_guard_holds_rising_mistakes_and_large_share_moves():
    result = shadow_evaluation(ACTIVE, CANDIDATE, window())
    assert guard_reasons(result, 2.5) == []  # share doubles, mistakes stay at 2
    assert guard_reasons(result, 1.5) == ["the flagged share moves from 25.00% to 50.00%, more than 1.5 times"]
    worse = shadow_evaluation(ACTIVE, ClassThresholds(0.95), window())  # 15 flagged, 12 and 14 missed
    reasons = guard_reasons(worse, 10.0)
    assert reasons == ["labelled mistakes rise from 2 to 3 (ID flagged 1 -> 1, OOD missed 1 -> 2)"]
    halved = shadow_evaluation(CANDIDATE, ACTIVE, window())  # 4 -> 2: a fall counts too
    assert "the flagged share moves from 50.00% to 25.00%, more than 1.5 times" in guard_reasons(halved, 1.5)
    with pytest.raises(InputError, match="max_share_factor: expected a number above 1"):
        guard_reasons(result, 1.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ShadowSamples.of([1, 2], [0], [0.1, 0.2]), "samples.predicted: has 1 entries"),
        (lambda: ShadowSamples.of([1, 2], [0, 0], [0.1]), r"samples.active_values: expected 2 values"),
        (lambda: ShadowSamples.of([1, 2], [0, 0], [0.1, 0.2], [0.3]), "samples.candidate_values"),
        (lambda: ShadowSamples.of([1, 2], [0, 0], [0.1, 0.2], labels=[0, 2]), "samples.labels: entries must be"),
        (lambda: ShadowSamples.of(["a"], [0], [0.1]), "samples.ids: expected a 1-D sequence of integer"),
        (lambda: ShadowSamples.of([1], [0], ["x"]), "samples.active_values: cannot be read as numbers"),
        (lambda: shadow_evaluation(0.5, CANDIDATE, window()), "active: expected ClassThresholds or None"),
        (lambda: shadow_evaluation(ACTIVE, 0.5, window()), "candidate: expected ClassThresholds"),
    ],
)
def test_bad_input_names_what_is_wrong(build, message):
    with pytest.raises(InputError, match=message):
        build()
