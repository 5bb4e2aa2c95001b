"""Threshold proposals on a real database (SQLite and PostgreSQL): propose, guard, approve, reject, expire."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.jobs import proposals
from monitor.jobs.refit import refit
from monitor.store.proposals import ProposalConflict
from monitor.stream.pipeline import PolicySource
from tests.store_data import register_model
from tests.integration.jobs_data import NOW, RecordingPublisher, add_threshold, context_for, mixture, write_scores

pytestmark = pytest.mark.integration

INDICATOR = "1C-Sum"


def _setup(store, active_value: float, activation: str, **thresholds):
    """900 ID-like and 100 OOD-like samples (N(0,1), N(8,1)) and an active threshold of `active_value`."""
    model = register_model(store, "classifier", "weights-1")
    active = add_threshold(store, model.id, active_value)
    values, _ = mixture(900, 100)
    ids = write_scores(store, model.id, values)
    publisher = RecordingPublisher()
    context = context_for(store, publisher, refit_method="two-means",
                          sections={"thresholds": {"activation": activation, **thresholds}})
    return model, active, ids, publisher, context


def _daemon_policy(store, model_id):
    """The policy the scoring daemon scores and judges with: its own reader of the active policy."""
    return PolicySource(store, model_id, INDICATOR, refresh_s=0.0).refresh()


def test_a_proposed_refit_changes_nothing_until_an_admin_approves_it_in_one_step(store):
    model, active, ids, publisher, context = _setup(store, 8.5, "propose")

    result = refit(context)

    assert result.proposal is not None, result.message
    proposal = result.proposal
    assert proposal.status == "waiting" and proposal.threshold_id == result.threshold.id
    assert store.active_threshold(model.id, INDICATOR).id == active, "the active threshold stays"
    assert _daemon_policy(store, model.id).version == active
    assert not store.get_threshold(proposal.threshold_id).active
    # The shadow evaluation compares both on the window: 8.5 flags about 31 OOD samples, the
    # two-means cut near 4 flags all 100 and no ID sample.
    evaluation = proposal.evaluation
    assert evaluation.n == 1000 and evaluation.flagged_after == 100
    assert evaluation.flagged_before < 50 and evaluation.newly_flagged_count == 100 - evaluation.flagged_before
    assert list(evaluation.newly_flagged) == sorted(evaluation.newly_flagged) and set(evaluation.newly_flagged) <= set(ids)
    assert sum(c.n for c in evaluation.classes) == 1000
    assert publisher.kinds() == ["threshold_proposed"]
    assert publisher.published[0][1]["proposal_id"] == proposal.id
    assert store.waiting_proposal(model.id, INDICATOR, now=NOW).id == proposal.id

    decided = proposals.decide(store, proposal.id, "approve", by="admin", note="looks right", now=NOW + timedelta(hours=1))

    assert decided.status == "approved" and decided.decided_by == "admin" and decided.decision_note == "looks right"
    assert decided.decided_at == NOW + timedelta(hours=1)
    assert store.active_threshold(model.id, INDICATOR).id == proposal.threshold_id
    judged_by = _daemon_policy(store, model.id)
    assert judged_by.version == proposal.threshold_id and judged_by.threshold == decided.value
    [alert] = store.list_alerts(kind="threshold_activated")
    activated = alert.payload.payload
    assert activated.proposal_id == proposal.id and activated.previous_threshold_id == active
    assert activated.approved_by == "admin" and alert.published_at is None  # the scheduler publishes it
    with pytest.raises(ProposalConflict, match="approved"):
        proposals.decide(store, proposal.id, "reject", by="other", note=None, now=NOW + timedelta(hours=2))
    assert store.waiting_proposal(model.id, INDICATOR, now=NOW) is None


def test_a_rejected_proposal_never_activates(store):
    model, active, _, _, context = _setup(store, 8.5, "propose")
    proposal = refit(context).proposal

    rejected = proposals.decide(store, proposal.id, "reject", by="admin", note="too many flags", now=NOW)

    assert rejected.status == "rejected" and rejected.decision_note == "too many flags"
    with pytest.raises(ProposalConflict, match="rejected"):
        proposals.decide(store, proposal.id, "approve", by="admin", note=None, now=NOW)
    assert store.active_threshold(model.id, INDICATOR).id == active
    assert _daemon_policy(store, model.id).version == active
    assert store.list_alerts(kind="threshold_activated") == []


def test_an_expired_proposal_never_activates(store):
    model, active, _, _, context = _setup(store, 8.5, "propose", proposal_ttl_hours=2.0)
    proposal = refit(context).proposal
    assert proposal.expires_at == NOW + timedelta(hours=2)

    with pytest.raises(ProposalConflict, match="expired"):
        proposals.decide(store, proposal.id, "approve", by="admin", note=None, now=NOW + timedelta(hours=3))

    assert store.get_proposal(proposal.id).status == "expired"
    assert store.active_threshold(model.id, INDICATOR).id == active
    assert _daemon_policy(store, model.id).version == active


def test_the_refit_expires_old_proposals_and_a_newer_one_replaces_the_waiting_one(store):
    model, active, _, _, context = _setup(store, 8.5, "propose", proposal_ttl_hours=2.0)
    first = refit(context).proposal
    second = refit(context).proposal
    assert store.get_proposal(first.id).status == "expired"
    assert store.get_proposal(first.id).decision_note == "replaced by a newer proposal"
    later = context_for(store, now=NOW + timedelta(hours=5), refit_method="two-means",
                        sections={"thresholds": {"activation": "propose", "proposal_ttl_hours": 2.0}})
    third = refit(later).proposal
    assert store.get_proposal(second.id).status == "expired" and store.get_proposal(second.id).decided_by == "expiry"
    assert store.get_proposal(third.id).status == "waiting"
    assert store.active_threshold(model.id, INDICATOR).id == active


def test_guarded_turns_a_fit_that_doubles_the_flagged_share_into_a_proposal_with_an_alert(store):
    model, active, _, publisher, context = _setup(store, 8.5, "guarded", guard_max_share_factor=2.0)

    result = refit(context)

    assert result.proposal is not None, result.message
    assert store.active_threshold(model.id, INDICATOR).id == active
    [reason] = result.proposal.evaluation.reasons
    assert "flagged share moves from" in reason and "more than 2 times" in reason
    [(kind, payload)] = publisher.published
    assert kind == "threshold_proposed" and payload["reasons"] == [reason]
    assert payload["share_after"] == pytest.approx(0.1)
    assert "proposed" in result.message and reason in result.message


def test_guarded_activates_a_fit_that_moves_little(store):
    model, active, _, publisher, context = _setup(store, 4.5, "guarded", guard_max_share_factor=2.0)

    result = refit(context)

    assert result.proposal is None, result.message
    assert store.active_threshold(model.id, INDICATOR).id == result.threshold.id != active
    assert publisher.kinds() == ["threshold_changed"]
    assert store.list_proposals(model.id) == []

