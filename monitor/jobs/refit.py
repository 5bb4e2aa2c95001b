"""Re-fit the threshold of the monitored indicator on a recent window, with the operators' labels.

Window: the last `refit_window_samples` samples of the model, or those of the last
`refit_window_hours` hours when that is set. Method and its parameters: `[jobs]`. Every
current label in the window steers the fit (monitor.thresholds.fit_threshold). Too few
samples: the active threshold stays and the run is recorded as skipped with the reason.
With at least `min_labels_for_weights` labels of each kind, the 1C-Sum weights are re-fitted
too (paper section 5). When the thresholded indicator is 1C-Sum, the threshold is fitted on the
window's 1C-Sum recomputed with those new weights. Threshold and weights are one policy, stored
in one transaction (Store.add_threshold) and read in one query by the stream, which scores and
judges each batch by one policy version: never weights and a threshold fitted on different scales.
With `[thresholds] per_class` the fit gives each predicted class with at least
`min_class_samples` samples in the window its own threshold (steered by that class's labels)
and the global one judges the rest; the own thresholds are stored in the same row
(`class_thresholds`), so they belong to the same policy version (monitor.proposals.fit_candidate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np

from monitor.errors import MonitorError
from monitor.jobs import proposals
from monitor.proposals import fit_candidate, same_thresholds
from monitor.clock import iso_utc
from monitor.jobs.scheduler import JobContext, JobOutcome
from monitor.names import INDICATORS, SUMMARY, SUMMARY_MEMBERS_EXCLUDED
from monitor.store.payloads import (
    SummaryWeightsDocument,
    ThresholdChangedAlert,
    ThresholdCounts,
    ThresholdParameters,
    Window,
    json_value,
)
from monitor.store.proposals import ProposalRow
from monitor.store.records import ThresholdRecord, ThresholdRow
from monitor.thresholds import ClassThresholds
from monitor.thresholds import NotEnoughData, SummaryWeights, fit_summary_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefitResult:
    model_id: int | None
    indicator: str
    threshold: ThresholdRow | None  # the new active threshold; None when the fit was refused
    previous: ThresholdRow | None
    message: str  # what was fitted, or why nothing was
    weights_message: str = ""
    summary_weights_id: int | None = None
    proposal: ProposalRow | None = None  # set when the threshold waits for an admin instead (stored inactive)

    @property
    def fitted(self) -> bool:
        return self.threshold is not None


def window_description(jobs_settings: Any) -> Window:
    if jobs_settings.refit_window_hours is not None:
        return Window(hours=jobs_settings.refit_window_hours)
    return Window(last_samples=jobs_settings.refit_window_samples)


def refit(context: JobContext, *, model_id: int | None = None, fitted_by: str | None = None) -> RefitResult:
    """Fit, store and activate a new threshold (and 1C-Sum weights when labels allow); alert on change."""
    jobs = context.settings.jobs
    store = context.store
    indicator = context.settings.stream.indicator
    if model_id is None:
        model_id = store.latest_model_id()
        if model_id is None:
            return RefitResult(None, indicator, None, None, "no scored samples yet: nothing to fit")
    elif store.get_model(model_id) is None:
        raise MonitorError(f"--model-id: no monitored model with id {model_id}")
    now = context.now()
    for expired in store.expire_proposals(now=now):
        log.info("proposal #%d expired without a decision; threshold #%d never activated", expired.id,
                 expired.threshold_id)
    if jobs.refit_window_hours is not None:
        window = store.window_scores(model_id, indicator, since=now - timedelta(hours=jobs.refit_window_hours))
    else:
        window = store.window_scores(model_id, indicator, last=jobs.refit_window_samples)
    previous = store.active_threshold(model_id, indicator)
    reweighting = _fit_summary_weights(context, model_id, window)
    values, labels, predicted = window.values, window.labels, window.predicted
    if reweighting.fitted is not None and indicator == SUMMARY:
        values, labels = reweighting.window_summary, reweighting.window_labels
        predicted = reweighting.window_predicted
    try:
        candidate = fit_candidate(context.settings, values, predicted, labels)
    except NotEnoughData as refusal:
        kept = (f"kept threshold #{previous.id} ({previous.value:.6g}, {previous.method})" if previous
                else "no threshold is active yet")
        unchanged = "; 1C-Sum weights unchanged with it" if reweighting.fitted is not None else ""
        return RefitResult(model_id, indicator, None, previous, f"{refusal}; {kept}{unchanged}")
    fit = candidate.fit

    method_parameters_used = ThresholdParameters.from_json(fit.parameters)
    # [thresholds] activation: the shadow evaluation says whether the fit waits for an admin.
    evaluation = hold = None
    reasons: list[str] = []
    if context.settings.thresholds.activation != "auto" and (
            previous is None or reweighting.fitted is not None
            or not same_thresholds(previous.thresholds, candidate.thresholds)):
        evaluation = _shadow(context, model_id, indicator, candidate.thresholds, window, reweighting)
        hold, reasons = proposals.holds(context.settings, evaluation)
    weights = None
    if reweighting.fitted is not None:
        weights = SummaryWeightsDocument.from_json(
            {**json_value(reweighting.fitted.to_dict()), "members": list(reweighting.members)})
    parameters = replace(method_parameters_used, window=window_description(jobs), used_labels=fit.used_labels,
                         details=candidate.details)
    counts = ThresholdCounts.from_json(fit.counts())
    # The thresholds (global and per class) and the weights are one policy: stored in one
    # transaction, so the stream never scores with one and judges with the other's predecessor.
    row = store.add_threshold(ThresholdRecord(
        model_id=model_id, indicator=indicator, method=fit.method, value=float(fit.threshold),
        parameters=parameters, counts=counts, window_start=window.start, window_end=window.end,
        fitted_by=fitted_by or f"scheduler {context.runner}", class_thresholds=candidate.classes,
    ), weights=weights, activate=not hold)
    weights_message, weights_id = reweighting.message, None
    if weights is not None:
        weights_id = row.summary_weights_id
        weights_message = f"1C-Sum weights #{weights_id} {reweighting.fitted.reason}"
    if hold:
        proposal = proposals.propose(context, row, evaluation, reasons, weights_id)
        message = (f"threshold #{row.id} proposed (proposal #{proposal.id}, waiting for an admin until "
                   f"{iso_utc(proposal.expires_at)}): {'; '.join(reasons)}; {candidate.explanation}")
        return RefitResult(model_id, indicator, row, previous, message, weights_message, weights_id, proposal)
    if _changed(previous, row):
        context.alerts.raise_alert(ThresholdChangedAlert(
            model_id=model_id, indicator=indicator, threshold_id=row.id, value=row.value, method=row.method,
            parameters=method_parameters_used,
            previous_threshold_id=previous.id if previous else None,
            previous_value=previous.value if previous else None,
            window=replace(window_description(jobs), start=iso_utc(window.start), end=iso_utc(window.end)),
            counts=counts, summary_weights_id=weights_id, explanation=candidate.explanation,
            class_thresholds=dict(candidate.classes.thresholds) if candidate.classes else None,
        ))
    message = f"threshold #{row.id}: {candidate.explanation}"
    return RefitResult(model_id, indicator, row, previous, message, weights_message, weights_id)


def _shadow(context: JobContext, model_id: int, indicator: str, thresholds: ClassThresholds, window: Any,
            reweighting: "Reweighting"):
    """The fitted threshold (with its re-fitted 1C-Sum weights) beside the active one, on the
    refit's window and every labelled sample."""
    jobs = context.settings.jobs
    span = proposals.Window(since=window.start) if jobs.refit_window_hours is not None else proposals.Window(
        last=jobs.refit_window_samples)
    values, members = None, ()
    if reweighting.fitted is not None and indicator == SUMMARY:
        model = context.store.get_model(model_id)
        members = reweighting.members
        values = proposals.summary_values(reweighting.fitted, members, context.store.get_calibration(model.fingerprint))
    return proposals.evaluate(context.store, model_id, indicator, thresholds, span, values, members)


def refit_job(context: JobContext, *, model_id: int | None = None, fitted_by: str | None = None) -> JobOutcome:
    result = refit(context, model_id=model_id, fitted_by=fitted_by)
    detail = result.message + (f"; {result.weights_message}" if result.weights_message else "")
    return JobOutcome.ok(detail) if result.fitted else JobOutcome.skipped(detail)


def _changed(previous: ThresholdRow | None, new: ThresholdRow) -> bool:
    """A refit that lands on the same thresholds and method is stored (history) but not alerted."""
    if previous is None:
        return True
    return not (same_thresholds(previous.thresholds, new.thresholds) and previous.method == new.method)


@dataclass(frozen=True)
class Reweighting:
    """Label-fitted 1C-Sum weights for a window, not yet stored; `fitted` None says why in `message`.

    window_summary, window_labels, window_predicted: the window's 1C-Sum recomputed with the new
    weights, for the samples whose member values are all known (the threshold is fitted on
    these), with their labels and predicted classes.
    """

    message: str
    fitted: SummaryWeights | None = None
    members: tuple[str, ...] = ()
    window_summary: np.ndarray | None = None
    window_labels: np.ndarray | None = None
    window_predicted: np.ndarray | None = None


def _fit_summary_weights(context: JobContext, model_id: int, window: Any) -> Reweighting:
    """Re-fit the 1C-Sum weights on the window's labelled samples (paper section 5)."""
    jobs = context.settings.jobs
    labels = np.asarray(window.labels)
    n_ood, n_id = int((labels == 1).sum()), int((labels == 0).sum())
    needed = jobs.min_labels_for_weights
    if min(n_ood, n_id) < needed:
        return Reweighting(f"1C-Sum weights unchanged: {n_ood} OOD and {n_id} ID labels in the window, "
                           f"re-weighting needs {needed} of each")
    model = context.store.get_model(model_id)
    calibration = context.store.get_calibration(model.fingerprint) if model else None
    if calibration is None:
        return Reweighting("1C-Sum weights unchanged: no noise calibration stored for the model's weights")
    members = tuple(name for name in INDICATORS
                    if name in calibration.means and name not in SUMMARY_MEMBERS_EXCLUDED)
    rows = context.store.indicator_window(model_id, members, since=window.start,
                                          until=window.end + timedelta(microseconds=1))
    in_window = np.isin(rows.sample_ids, window.sample_ids)
    complete = in_window & np.all([np.isfinite(rows.values[name]) for name in members], axis=0)
    labelled = complete & (rows.labels >= 0)
    if not labelled.any():
        return Reweighting("1C-Sum weights unchanged: the labelled samples lack member indicator values")
    fitted = fit_summary_weights(
        {name: rows.values[name][labelled] for name in members}, rows.labels[labelled],
        calibration.means, calibration.stds, min_per_class=needed,
    )
    if not fitted.used_labels:
        return Reweighting(fitted.reason)
    summary = fitted.summary({name: rows.values[name][complete] for name in members},
                             calibration.means, calibration.stds)
    # The predicted classes of those samples, from the window (every one of them is in it).
    order = np.argsort(window.sample_ids)
    where = order[np.searchsorted(window.sample_ids, rows.sample_ids[complete], sorter=order)]
    return Reweighting("", fitted, members, summary, rows.labels[complete], window.predicted[where])
