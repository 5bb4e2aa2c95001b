"""Threshold candidates judged beside the active threshold, and decisions on proposals.

Shared by the refit job (monitor.jobs.refit, monitor.jobs.proposals: it proposes) and the web
app (it decides, and its what-if form asks): the shadow evaluation of a candidate on a window of
the store and every labelled sample (the science in monitor.shadow), its stored form, and the
approval or rejection of a waiting proposal (the transaction in monitor.store.proposals).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import numpy as np

from monitor.errors import InputError
from monitor.shadow import ShadowEvaluation, ShadowSamples, shadow_evaluation
from monitor.store.payloads import ClassThresholdsDocument, NoiseCalibration, ProposalEvaluation, json_value
from monitor.store import IndicatorWindow
from monitor.store.proposals import ProposalRow
from monitor.thresholds import ClassThresholds, ThresholdFit, fit_class_thresholds, fit_threshold

log = logging.getLogger(__name__)

MAX_IDS = 500
"""Ids of samples that change side kept with a proposal (the counts stay exact)."""

CandidateValues = Callable[[IndicatorWindow], np.ndarray]
"""The candidate's indicator values for some samples (e.g. 1C-Sum with re-fitted weights)."""


@dataclass(frozen=True)
class Window:
    """The samples a shadow evaluation judges: those since `since`, or the `last` newest."""

    since: datetime | None = None
    last: int | None = None


def active_policy(store: Any, model_id: int, indicator: str) -> ClassThresholds | None:
    """The thresholds of the active policy (its own thresholds of predicted classes included)."""
    policy = store.active_policy(model_id, indicator)
    return None if policy is None else policy.thresholds


@dataclass(frozen=True)
class CandidateFit:
    """A re-fit's thresholds: `fit` is the global one (fitted on every value and label); with
    `[thresholds] per_class`, `classes` holds the own thresholds of the predicted classes with
    enough samples (None without per_class). `details` and `explanation`: the whole fit."""

    fit: ThresholdFit
    thresholds: ClassThresholds
    classes: ClassThresholdsDocument | None
    details: dict[str, Any]
    explanation: str


def fit_candidate(settings: Any, values: Any, predicted: Any, labels: Any, method: str | None = None) -> CandidateFit:
    """Fit the thresholds a re-fit (or the what-if form) proposes: `[jobs]` method and parameters,
    and per predicted class when `[thresholds] per_class` is set (classes with at least
    `min_class_samples` samples get their own threshold, steered by their own labels; the global
    one judges the rest). NotEnoughData (a MonitorError) when the global fit is refused."""
    jobs = settings.jobs
    method = method or jobs.refit_method
    parameters = method_parameters(jobs, method)
    if not settings.thresholds.per_class:
        fit = fit_threshold(values, method, labels, min_samples=jobs.min_samples, **parameters)
        return CandidateFit(fit, ClassThresholds(float(fit.threshold)), None, json_value(fit.details), fit.explain())
    fitted = fit_class_thresholds(values, predicted, method, labels, min_samples=jobs.min_samples,
                                  min_class_samples=settings.thresholds.min_class_samples, **parameters)
    return CandidateFit(fitted.overall, fitted.thresholds, ClassThresholdsDocument.of_fit(fitted),
                        json_value(fitted.to_dict()), fitted.explain())


def same_thresholds(first: ClassThresholds | None, second: ClassThresholds | None) -> bool:
    """Whether two sets of thresholds judge alike (equal up to rounding, the same classes own one)."""
    if first is None or second is None:
        return first is second

    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)

    return (close(first.global_threshold, second.global_threshold)
            and first.per_class.keys() == second.per_class.keys()
            and all(close(value, second.per_class[key]) for key, value in first.per_class.items()))


def evaluate(store: Any, model_id: int, indicator: str, candidate: ClassThresholds, window: Window,
             candidate_values: CandidateValues | None = None, members: tuple[str, ...] = ()) -> ShadowEvaluation:
    """The candidate beside the active threshold on the window and on every labelled sample.

    The active values are the stored indicator values (as the daemon judged them); the
    candidate's are the same unless `candidate_values` computes them from `members`.
    """
    names = (indicator, *[name for name in members if name != indicator])

    def samples(rows: IndicatorWindow, name: str) -> ShadowSamples:
        active = rows.values[indicator]
        candidate_array = candidate_values(rows) if candidate_values is not None else None
        return ShadowSamples.of(rows.sample_ids, rows.predicted, active, candidate_array, rows.labels, name=name)

    window_rows = store.indicator_window(model_id, names, since=window.since, last=window.last)
    labelled_rows = store.indicator_window(model_id, names, labelled_only=True)
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


def with_class_threshold(store: Any, model_id: int, indicator: str, predicted_class: int,
                         value: float) -> ClassThresholds:
    """The active thresholds with `value` as `predicted_class`'s own (the what-if form with a class
    selected): every other threshold as active. InputError when nothing is active to change."""
    active = active_policy(store, model_id, indicator)
    if active is None:
        raise InputError("predicted_class: no threshold is active yet to change one class of; "
                         "type a global threshold first")
    return ClassThresholds(active.global_threshold, {**active.per_class, int(predicted_class): value})


def what_if_fit(store: Any, settings: Any, model_id: int, indicator: str, method: str,
                window: Window) -> tuple[ClassThresholds, str]:
    """The thresholds `method` would fit on the window's values of `indicator` with their current
    labels (as a re-fit: fit_candidate, so per predicted class with `[thresholds] per_class`), and
    the fit in words; nothing is stored. NotEnoughData (a MonitorError) when the window is too
    small for the method."""
    from monitor.thresholds import METHODS

    if method not in METHODS:
        raise InputError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    scores = store.window_scores(model_id, indicator, since=window.since, last=window.last)
    candidate = fit_candidate(settings, scores.values, scores.predicted, scores.labels, method)
    return candidate.thresholds, candidate.explanation


def summary_values(fitted: Any, members: tuple[str, ...], calibration: NoiseCalibration) -> CandidateValues:
    """1C-Sum recomputed with re-fitted weights; NaN where a member value is missing."""

    def values(rows: IndicatorWindow) -> np.ndarray:
        result = np.full(len(rows), np.nan)
        complete = np.all([np.isfinite(rows.values[name]) for name in members], axis=0) if len(rows) else []
        if len(rows) and np.any(complete):
            result[complete] = fitted.summary({name: rows.values[name][complete] for name in members},
                                              calibration.means, calibration.stds)
        return result

    return values


__all__ = ["MAX_IDS", "CandidateFit", "Window", "active_policy", "decide", "document", "evaluate", "fit_candidate",
           "method_parameters", "same_thresholds", "summary_values", "what_if", "what_if_fit", "with_class_threshold"]
