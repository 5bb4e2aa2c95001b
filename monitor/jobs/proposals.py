"""Threshold proposals: judge a candidate beside the active threshold, hold it for an admin, decide it.

`[thresholds] activation` says what a re-fit does with its threshold (monitor.jobs.refit):
`auto` activates it; `propose` stores it inactive as a proposal; `guarded` activates it unless
monitor.shadow.guard_reasons finds a reason to hold it, and then proposes it. A proposal raises
`threshold_proposed` (with the reasons); an approval activates the threshold (and its 1C-Sum
weights) in one transaction and raises `threshold_activated`. The web app and the API decide
proposals through `decide`. The shadow evaluation judges the re-fit's window and every labelled
sample of the model with both thresholds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

import numpy as np

from monitor.clock import iso_utc
from monitor.errors import InputError
from monitor.shadow import ShadowEvaluation, ShadowSamples, guard_reasons, shadow_evaluation
from monitor.store.payloads import (
    NoiseCalibration,
    ProposalEvaluation,
    ThresholdProposedAlert,
    json_value,
)
from monitor.store.proposals import ProposalRecord, ProposalRow, ShadowRows
from monitor.store.records import ThresholdRow
from monitor.thresholds import ClassThresholds

log = logging.getLogger(__name__)

MAX_IDS = 500
"""Ids of samples that change side kept with a proposal (the counts stay exact)."""

CandidateValues = Callable[[ShadowRows], np.ndarray]
"""The candidate's indicator values for some samples (e.g. 1C-Sum with re-fitted weights)."""


@dataclass(frozen=True)
class Window:
    """The samples a shadow evaluation judges: those since `since`, or the `last` newest."""

    since: datetime | None = None
    last: int | None = None


def active_policy(store: Any, model_id: int, indicator: str) -> ClassThresholds | None:
    row = store.active_threshold(model_id, indicator)
    return None if row is None else ClassThresholds(row.value)


def evaluate(store: Any, model_id: int, indicator: str, candidate: ClassThresholds, window: Window,
             candidate_values: CandidateValues | None = None, members: tuple[str, ...] = ()) -> ShadowEvaluation:
    """The candidate beside the active threshold on the window and on every labelled sample.

    The active values are the stored indicator values (as the daemon judged them); the
    candidate's are the same unless `candidate_values` computes them from `members`.
    """
    names = (indicator, *[name for name in members if name != indicator])

    def samples(rows: ShadowRows, name: str) -> ShadowSamples:
        active = rows.values[indicator]
        candidate_array = candidate_values(rows) if candidate_values is not None else None
        return ShadowSamples.of(rows.ids, rows.predicted, active, candidate_array, rows.labels, name=name)

    window_rows = store.shadow_rows(model_id, names, since=window.since, last=window.last)
    labelled_rows = store.shadow_rows(model_id, names, labelled=True)
    return shadow_evaluation(active_policy(store, model_id, indicator), candidate,
                             samples(window_rows, "window"), samples(labelled_rows, "labelled"))


def document(evaluation: ShadowEvaluation, reasons: list[str] = ()) -> ProposalEvaluation:
    """The stored, typed form of an evaluation (id lists capped at MAX_IDS)."""
    return ProposalEvaluation.from_json({**json_value(evaluation.to_dict(max_ids=MAX_IDS)),
                                         "reasons": list(reasons), "explanation": evaluation.explain()})


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
    ))
    return proposal


def decide(store: Any, proposal_id: int, decision: str, *, by: str, note: str | None,
           now: datetime) -> ProposalRow:
    """Approve or reject a waiting proposal (monitor.store.proposals). An approval keeps its
    `threshold_activated` alert as a row in the same transaction; the scheduler's redelivery
    publishes it (the web process has no alerts producer)."""
    decided = store.decide_proposal(proposal_id, decision, by=by, note=note, now=now)
    log.info("proposal #%d %s by %s%s", decided.id, decided.status, by, f": {note}" if note else "")
    return decided


def what_if(store: Any, model_id: int, indicator: str, candidate: ClassThresholds, window: Window) -> ShadowEvaluation:
    """The shadow evaluation of a typed-in or freshly fitted threshold; nothing is stored."""
    return evaluate(store, model_id, indicator, candidate, window)


def what_if_fit(store: Any, jobs_settings: Any, model_id: int, indicator: str, method: str,
                window: Window) -> tuple[ClassThresholds, str]:
    """The threshold `method` would fit on the window's values of `indicator` with their current
    labels (the `[jobs]` parameters and min_samples of a re-fit), and the fit in words; nothing is
    stored. NotEnoughData (a MonitorError) when the window is too small for the method."""
    from monitor.jobs.refit import method_parameters  # the refit job imports this module
    from monitor.thresholds import METHODS, fit_threshold

    if method not in METHODS:
        raise InputError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    scores = store.window_scores(model_id, indicator, since=window.since, last=window.last)
    fit = fit_threshold(scores.values, method, scores.labels, min_samples=jobs_settings.min_samples,
                        **method_parameters(jobs_settings, method))
    return ClassThresholds(float(fit.threshold)), fit.explain()


def summary_values(fitted: Any, members: tuple[str, ...], calibration: NoiseCalibration) -> CandidateValues:
    """1C-Sum recomputed with re-fitted weights; NaN where a member value is missing."""

    def values(rows: ShadowRows) -> np.ndarray:
        result = np.full(len(rows), np.nan)
        complete = np.all([np.isfinite(rows.values[name]) for name in members], axis=0) if len(rows) else []
        if len(rows) and np.any(complete):
            result[complete] = fitted.summary({name: rows.values[name][complete] for name in members},
                                              calibration.means, calibration.stds)
        return result

    return values


__all__ = ["MAX_IDS", "Window", "active_policy", "decide", "document", "evaluate", "holds", "propose",
           "summary_values", "what_if", "what_if_fit"]
