"""Threshold proposals of the refit job: hold a fit for an admin, or not, and propose it.

`[thresholds] activation` says what a re-fit does with its threshold (monitor.jobs.refit):
`auto` activates it; `propose` stores it inactive as a proposal; `guarded` activates it unless
monitor.shadow.guard_reasons finds a reason to hold it, and then proposes it. A proposal raises
`threshold_proposed` (with the reasons). The shadow evaluation, its stored form and the
decisions (which the web app and the API make) are in monitor.proposals, below both.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from monitor.clock import iso_utc
from monitor.proposals import MAX_IDS, Window, decide, document, evaluate, summary_values
from monitor.shadow import ShadowEvaluation, guard_reasons
from monitor.store.payloads import ThresholdProposedAlert
from monitor.store.proposals import ProposalRecord, ProposalRow
from monitor.store.records import ThresholdRow

log = logging.getLogger(__name__)


def holds(settings: Any, evaluation: ShadowEvaluation) -> tuple[bool, list[str]]:
    """(hold for approval?, why) under `[thresholds] activation`."""
    thresholds = settings.thresholds
    if thresholds.activation == "propose":
        return True, ["[thresholds] activation is 'propose': every re-fit waits for an admin"]
    if thresholds.activation == "guarded":
        reasons = guard_reasons(evaluation, thresholds.guard_max_share_factor)
        return bool(reasons), reasons
    return False, []


def propose(context: Any, threshold: ThresholdRow, evaluation: ShadowEvaluation, reasons: list[str],
            summary_weights_id: int | None) -> ProposalRow:
    """Store the (inactive) threshold as a waiting proposal and alert `threshold_proposed`."""
    now = context.now()
    ttl = context.settings.thresholds.proposal_ttl_hours
    proposal = context.store.add_proposal(ProposalRecord(
        model_id=threshold.model_id, indicator=threshold.indicator, threshold_id=threshold.id,
        summary_weights_id=summary_weights_id, evaluation=document(evaluation, reasons),
        expires_at=now + timedelta(hours=ttl), proposed_by=threshold.fitted_by,
    ), now=now)
    context.alerts.raise_alert(ThresholdProposedAlert(
        model_id=proposal.model_id, indicator=proposal.indicator, proposal_id=proposal.id,
        threshold_id=threshold.id, value=threshold.value, method=threshold.method, reasons=tuple(reasons),
        share_before=evaluation.share_before, share_after=evaluation.share_after,
        expires_at=iso_utc(proposal.expires_at), explanation=evaluation.explain(),
        class_thresholds=dict(threshold.class_thresholds.thresholds) if threshold.class_thresholds else None,
    ))
    return proposal


__all__ = ["MAX_IDS", "Window", "decide", "document", "evaluate", "holds", "propose", "summary_values"]
