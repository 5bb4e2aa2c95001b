"""The drift report job: one self-contained HTML file per period, indexed in `reports`.

Scheduled runs report the period that just ended: [fire time - report_every_hours, fire time).
The reference window is the `reference_hours` just before the period. The report covers the
model of the most recently scored sample in the period (a new set of weights is a new model).
A `drift` alert is raised when at least one indicator drifts (monitor.reports.drift).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monitor.clock import iso_utc as iso_utc
from monitor.errors import InputError, MonitorError
from monitor.jobs.scheduler import JobContext, JobOutcome, latest_fire_time
from monitor.names import INDICATORS
from monitor.reports.drift import compare_indicators
from monitor.reports.render import OodSample, ReportContent, ThresholdPoint, VolumeBin, render_report
from monitor.store.payloads import DriftAlert, DriftTest, ReportSummary, Window
from monitor.store.records import ReportRow

log = logging.getLogger(__name__)

# Bin widths for the volume plot: the first giving at most MAX_BINS bins over the period.
BIN_CHOICES_S = (60, 300, 900, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BINS = 60

# Indicator values read per window for the KS tests and histograms: an even subsample above
# this keeps memory bounded on busy streams, and KS on 100k values already sees tiny shifts.
MAX_VALUES_PER_WINDOW = 100_000


@dataclass(frozen=True)
class ReportResult:
    report: ReportRow | None
    path: Path | None
    drifted: list[str]
    message: str


def bin_seconds_for(period: timedelta) -> int:
    seconds = period.total_seconds()
    for choice in BIN_CHOICES_S:
        if seconds / choice <= MAX_BINS:
            return choice
    return BIN_CHOICES_S[-1]


def make_report(context: JobContext, start: datetime, end: datetime) -> ReportResult:
    """Build, write and index the drift report of [start, end); alert when drift is found."""
    if start.tzinfo is None or end.tzinfo is None:
        raise InputError("report period: start and end must be timezone-aware (UTC)")
    if not start < end:
        raise InputError(f"report period: start {iso_utc(start)} is not before end {iso_utc(end)}")
    jobs = context.settings.jobs
    store = context.store
    indicator = context.settings.stream.indicator
    directory = _report_directory(Path(jobs.report_dir))
    model_id = store.latest_model_id(until=end)
    if model_id is None:
        return ReportResult(None, None, [], f"no scored samples before {iso_utc(end)}: no report")
    reference_start = start - timedelta(hours=jobs.reference_hours)
    steps = tqdm(total=4, desc="report data", unit="query", disable=not context.progress)
    bins = _volume(store, model_id, start, end)
    steps.update()
    period = store.indicator_window(model_id, INDICATORS, since=start, until=end, max_rows=MAX_VALUES_PER_WINDOW)
    steps.update()
    reference = store.indicator_window(model_id, INDICATORS, since=reference_start, until=start,
                                       max_rows=MAX_VALUES_PER_WINDOW)
    steps.update()
    present = [name for name in INDICATORS
               if _has_values(period.values[name]) or _has_values(reference.values[name])]
    drift = compare_indicators(
        {name: period.values[name] for name in present}, {name: reference.values[name] for name in present},
        alpha=jobs.drift_alpha, min_effect=jobs.drift_min_effect, min_samples=jobs.drift_min_samples,
    )
    history = [row for row in reversed(store.threshold_history(model_id, limit=500)) if row.created_at < end]
    top = store.top_scored_samples(model_id, indicator, start, end, jobs.report_top_samples)
    labels = store.label_counts(model_id, start, end)
    steps.update()
    steps.close()
    reference_total = _count(store, model_id, reference_start, start)
    notes = []
    if len(reference) == 0:
        notes.append("The reference window holds no samples: no indicator could be compared.")
    for name, total, read in (("period", sum(entry.count for entry in bins), len(period)),
                              ("reference window", reference_total, len(reference))):
        if read < total:
            notes.append(f"The {name} holds {total} samples; the distributions and tests use an even "
                         f"subsample of {read}.")
    content = ReportContent(
        period_start=start, period_end=end, reference_start=reference_start, reference_end=start,
        indicator=indicator, expected_share=jobs.expected_share, alpha=jobs.drift_alpha,
        min_effect=jobs.drift_min_effect, volume=bins,
        period_values={name: period.values[name] for name in present},
        reference_values={name: reference.values[name] for name in present},
        drift=drift,
        thresholds=[ThresholdPoint(row.created_at, row.indicator, row.method, row.value,
                                   row.counts.n if row.counts else 0,
                                   row.counts.n_labelled_ood + row.counts.n_labelled_id if row.counts else 0)
                    for row in history],
        label_counts=labels,
        top_ood=[OodSample(str(sample.sample_key), sample.score, sample.scored_at, sample.label, sample.image)
                 for sample in top],
        generated_at=context.now(), notes=notes,
    )
    html = render_report(content, progress=context.progress)
    path = _write(directory, start, end, html)
    drifted = [entry for entry in drift if entry.drifted]
    tests = tuple(DriftTest(indicator=entry.indicator, statistic=entry.statistic, p_value=entry.p_value,
                            adjusted_p_value=entry.adjusted_p_value, drifted=entry.drifted) for entry in drift)
    summary = ReportSummary(
        model_id=model_id, indicator=indicator, samples=content.total, flagged=content.flagged,
        reference=Window(start=iso_utc(reference_start), end=iso_utc(start), samples=reference_total),
        labels=labels, drifted=tuple(entry.indicator for entry in drifted), tests=tests,
        correction="holm", alpha=jobs.drift_alpha, min_effect=jobs.drift_min_effect,
    )
    row = store.add_report(start, end, summary, str(path))
    if drifted:
        context.alerts.raise_alert(DriftAlert(
            report_id=row.id, model_id=model_id, period=Window(start=iso_utc(start), end=iso_utc(end)),
            reference=Window(start=iso_utc(reference_start), end=iso_utc(start)),
            drifted=tuple(replace(test, drifted=None) for test in tests if test.drifted),
            test="two-sample Kolmogorov-Smirnov", correction="holm", alpha=jobs.drift_alpha,
            min_effect=jobs.drift_min_effect, file_path=str(path),
        ))
    message = (f"report #{row.id} {path}: {content.total} samples, "
               + (f"drift in {', '.join(summary.drifted)}" if drifted
                  else f"nothing compared: {content.not_compared_reason}" if not content.compared
                  else "no drift"))
    return ReportResult(row, path, list(summary.drifted), message)


def drift_report_job(context: JobContext) -> JobOutcome:
    period = timedelta(hours=context.settings.jobs.report_every_hours)
    end = latest_fire_time(context.now(), period.total_seconds())
    start = end - period
    if any(row.period_start == start and row.period_end == end for row in context.store.list_reports(limit=20)):
        return JobOutcome.skipped(f"the report of {iso_utc(start)} to {iso_utc(end)} exists already")
    result = make_report(context, start, end)
    return JobOutcome.ok(result.message) if result.report else JobOutcome.skipped(result.message)


def _has_values(values) -> bool:
    return bool(np.isfinite(values).any())


def _count(store, model_id: int, start: datetime, end: datetime) -> int:
    return sum(count.total for count in store.flagged_counts(start, end) if count.model_id == model_id)


def _volume(store, model_id: int, start: datetime, end: datetime) -> list[VolumeBin]:
    """Bins covering [start, end) on the store's epoch-aligned buckets; empty bins included."""
    width = bin_seconds_for(end - start)
    return [VolumeBin(bucket.start, bucket.total, bucket.flagged)
            for bucket in store.ood_rate(model_id, since=start, until=end, bucket_seconds=width)]


def _report_directory(directory: Path) -> Path:
    """Create the report directory up front: a bad path fails the run before any work is done."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MonitorError(f"[jobs] report_dir: cannot create {directory}: {error.strerror or error}") from None
    if not os.access(directory, os.W_OK):
        raise MonitorError(f"[jobs] report_dir: {directory} is not writable")
    # Stored absolute: the web app, perhaps started from another working directory, serves it.
    return directory.resolve()


def _write(directory: Path, start: datetime, end: datetime, html: str) -> Path:
    path = directory / f"drift-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.html"
    partial = path.with_suffix(".html.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, path)  # readers never see a half-written report
    return path.resolve()
