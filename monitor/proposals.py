"""Threshold candidates judged beside the active threshold, and decisions on proposals.

Shared by the refit job (monitor.jobs.refit, monitor.jobs.proposals: it proposes) and the web
app (it decides, and its what-if form asks): the shadow evaluation of a candidate on a window of
the store and every labelled sample (the science in monitor.shadow), its stored form, and the
approval or rejection of a waiting proposal (the transaction in monitor.store.proposals).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import numpy as np

from monitor.errors import InputError
from monitor.shadow import ShadowEvaluation, ShadowSamples, shadow_evaluation
from monitor.store.payloads import NoiseCalibration, ProposalEvaluation, json_value
from monitor.store.proposals import ProposalRow, ShadowRows
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



def method_parameters(jobs_settings: Any, method: str | None = None) -> dict[str, float]:
    """The keyword parameters of fit_threshold for `method` (default `[jobs] refit_method`)."""
    method = method or jobs_settings.refit_method
    if method == "proportion":
        return {"p": jobs_settings.expected_share}
    if method == "extreme-value":
        return {"q": jobs_settings.extreme_value_q}
    return {}



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


__all__ = ["MAX_IDS", "Window", "active_policy", "decide", "document", "evaluate", "method_parameters",
           "summary_values", "what_if", "what_if_fit"]
