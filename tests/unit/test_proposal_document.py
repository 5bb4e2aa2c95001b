"""The stored form of a proposal's shadow evaluation: what the refit writes is what the page reads."""

from __future__ import annotations

import json

import pytest

from monitor.jobs.proposals import MAX_IDS, document
from monitor.shadow import ShadowSamples, guard_reasons, shadow_evaluation
from monitor.store.payloads import PayloadError, PolicyThresholds, ProposalEvaluation
from monitor.thresholds import ClassThresholds


def _evaluation(n: int = 8):
    window = ShadowSamples.of(list(range(1, n + 1)), [0, 1] * (n // 2), [float(i) for i in range(n)],
                              labels=[1, 0] + [-1] * (n - 2))
    return shadow_evaluation(ClassThresholds(5.5), ClassThresholds(2.5), window)


def test_the_document_survives_a_json_round_trip_with_its_counts_and_reasons():
    evaluation = _evaluation()
    reasons = guard_reasons(evaluation, 1.5)
    stored = document(evaluation, reasons)

    read = ProposalEvaluation.from_json(json.loads(json.dumps(stored.to_json())))

    assert read == stored
    assert (read.n, read.flagged_before, read.flagged_after) == (8, 2, 5)
    assert read.newly_flagged == (4, 5, 6) and read.cleared == ()
    assert [c.flagged_after for c in read.classes] == [2, 3]
    assert read.labelled.n_ood == 1 and read.labelled.mistakes_before == 1 and read.labelled.mistakes_after == 1
    assert read.reasons == tuple(reasons) and "more than 1.5 times" in reasons[0]
    assert read.explanation == evaluation.explain()
    assert read.candidate == PolicyThresholds(2.5, {}) and read.active == PolicyThresholds(5.5, {})
    assert stored.to_json()["candidate"] == {"global": 2.5, "per_class": {}}


def test_long_id_lists_are_capped_but_the_counts_stay_exact():
    n = 2 * MAX_IDS + 200
    window = ShadowSamples.of(list(range(n)), [0] * n, [float(i) for i in range(n)])
    evaluation = shadow_evaluation(ClassThresholds(n - 1.0), ClassThresholds(-1.0), window)
    stored = document(evaluation)
    assert len(stored.newly_flagged) == MAX_IDS
    assert stored.newly_flagged_count == len(evaluation.newly_flagged) > MAX_IDS


def test_a_document_of_another_shape_is_refused_naming_the_keys():
    good = document(_evaluation()).to_json()
    with pytest.raises(PayloadError, match="unknown key.*'extra'"):
        ProposalEvaluation.from_json({**good, "extra": 1})
    missing = dict(good)
    del missing["reasons"]
    with pytest.raises(PayloadError, match="'reasons' missing"):
        ProposalEvaluation.from_json(missing)


def test_the_proposal_alerts_round_trip_as_their_own_kinds():
    from monitor.store.payloads import AlertDocument, ThresholdActivatedAlert, ThresholdProposedAlert

    proposed = ThresholdProposedAlert(
        model_id=1, indicator="1C-Sum", proposal_id=3, threshold_id=7, value=2.5, method="two-means",
        reasons=("the flagged share moves 2.5 times",), share_before=0.1, share_after=0.25,
        expires_at="2026-12-04T12:00:00.000Z", explanation="on the 8 samples ...")
    activated = ThresholdActivatedAlert(
        model_id=1, indicator="1C-Sum", proposal_id=3, threshold_id=7, value=2.5, method="two-means",
        previous_threshold_id=5, previous_value=5.5, summary_weights_id=None, approved_by="ada", note=None)
    for payload in (proposed, activated):
        stored = AlertDocument(payload, "2026-12-03T12:00:00.000Z")
        again = AlertDocument.from_json(json.loads(json.dumps(stored.to_json())))
        assert again == stored and again.kind == payload.KIND
    with pytest.raises(PayloadError, match="'approved_by' missing"):
        AlertDocument.from_json({k: v for k, v in AlertDocument(activated, "x").to_json().items()
                                 if k != "approved_by"})
