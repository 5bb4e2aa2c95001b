"""What each page shows, assembled once and shared by the HTML pages and the JSON API."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Sequence

from monitor.clock import utc_now
from monitor.names import INDICATORS
from monitor.store import Store
from monitor.store.records import (
    AlertRow,
    Histogram,
    JobRunRow,
    ModelRow,
    RateBucket,
    ReportRow,
    SampleDetail,
    ThresholdRow,
    WindowCounts,
)

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """An id in the request names nothing stored; the message says what."""


def pick_model(models: list[ModelRow], requested: int | None) -> ModelRow | None:
    """The requested model, else the newest; None when no model has been registered yet."""
    if requested is None:
        return models[0] if models else None
    for model in models:
        if model.id == requested:
            return model
    raise NotFound(f"model {requested} not found")


def window_bounds(hours: float, end: datetime | None = None) -> tuple[datetime, datetime]:
    end = end or utc_now()
    return end - timedelta(hours=hours), end


def report_file(report: ReportRow, report_dir: Path) -> Path | None:
    """The file the job wrote for this report, if it still exists inside `report_dir`.

    The path comes from the database row only, never the request; and only a file under the
    configured report directory is served, whatever a row says (a row that points elsewhere
    is logged and treated as having no file).
    """
    if not report.file_path:
        return None
    path = Path(report.file_path).resolve()
    if not path.is_relative_to(report_dir.resolve()):
        log.warning("report %s: its file %s is outside [jobs] report_dir %s; not served",
                    report.id, path, report_dir.resolve())
        return None
    return path if path.is_file() else None


def bucket_seconds(window_hours: float) -> int:
    """About 48 bars per chart, rounded to a readable step."""
    target = window_hours * 3600 / 48
    for step in (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800):
        if step >= target:
            return step
    return 604800


def describe_bucket(seconds: int) -> str:
    if seconds % 86400 == 0:
        days = seconds // 86400
        return "day" if days == 1 else f"{days} days"
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "hour" if hours == 1 else f"{hours} hours"
    return f"{seconds // 60} minutes"


@dataclass(frozen=True)
class Overview:
    model: ModelRow | None
    window_start: datetime
    window_end: datetime
    window_hours: float
    bucket_s: int
    buckets: list[RateBucket]
    counts: WindowCounts
    active_thresholds: list[ThresholdRow]
    consumer_lag: int | None
    job_runs: list[JobRunRow]
    alerts: list[AlertRow]


def overview(
    store: Store, model: ModelRow | None, window_hours: float, consumer_lag: Callable[[], int | None] | None
) -> Overview:
    start, end = window_bounds(window_hours)
    step = bucket_seconds(window_hours)
    if model is None:
        buckets, counts, active = [], WindowCounts(0, 0, 0), []
    else:
        buckets = store.ood_rate(model.id, since=start, until=end, bucket_seconds=step)
        counts = store.window_counts(model.id, start, end, buckets)
        active = store.active_thresholds(model.id)
    lag = None
    if consumer_lag is not None:
        try:
            lag = consumer_lag()
        except Exception:  # noqa: BLE001 - the lag is informative; its failure must not break the page
            log.warning("consumer lag unavailable", exc_info=True)
            lag = None
    return Overview(
        model=model, window_start=start, window_end=end, window_hours=window_hours, bucket_s=step, buckets=buckets,
        counts=counts, active_thresholds=active, consumer_lag=lag,
        job_runs=store.list_job_runs(limit=10), alerts=store.list_alerts(limit=10),
    )


@dataclass(frozen=True)
class IndicatorReading:
    name: str
    value: float | None
    percentile: float | None
    thresholded: bool


@dataclass(frozen=True)
class JudgedBy:
    """The threshold that judged a sample: its value, whether it is the global threshold or its
    predicted class's own (`class_label` names that class), and the policy version it belongs to."""

    value: float
    scope: str  # "global" or "class"
    predicted_class: int | None
    class_label: str | None
    policy_version: int

    def describe(self) -> str:
        whose = "the global threshold" if self.scope == "global" else f"the own threshold of {self.class_label}"
        return f"{whose}, policy #{self.policy_version}"


@dataclass(frozen=True)
class SampleReport:
    sample: SampleDetail
    readings: list[IndicatorReading]
    window_start: datetime
    window_end: datetime
    threshold: ThresholdRow | None
    class_label: str  # the predicted class by name where the model knows its class names
    judged_by: JudgedBy | None = None  # None: judged without a threshold (no policy was active)


def sample_report(store: Store, sample_id: int, window_hours: float) -> SampleReport:
    """With the policy version that judged the sample (Store.policy), the report says which of its
    thresholds did (Policy.judgement)."""
    sample = store.get_sample(sample_id)
    if sample is None:
        raise NotFound(f"sample {sample_id} not found")
    start, end = window_bounds(window_hours)
    percentiles = store.percentiles_in_window(sample.model_id, sample.scores, start, end)
    readings = [
        IndicatorReading(
            name=name, value=sample.scores[name], percentile=percentiles.get(name),
            thresholded=(name == sample.score_indicator),
        )
        for name in INDICATORS
        if sample.scores.get(name) is not None
    ]
    threshold = store.get_threshold(sample.threshold_id) if sample.threshold_id is not None else None
    model = store.get_model(sample.model_id)
    class_label = (model.preprocessing.class_label(sample.predicted_class) if model is not None
                   else f"class {sample.predicted_class}")
    judged_by = None
    policy = store.policy(sample.threshold_id) if sample.threshold_id is not None else None
    if policy is not None:
        judgement = policy.judgement(sample.predicted_class)
        judged_by = JudgedBy(value=judgement.value, scope=judgement.scope, predicted_class=judgement.predicted_class,
                             class_label=class_label if judgement.predicted_class is not None else None,
                             policy_version=judgement.version)
    return SampleReport(sample=sample, readings=readings, window_start=start, window_end=end, threshold=threshold,
                        class_label=class_label, judged_by=judged_by)


@dataclass(frozen=True)
class ThresholdsView:
    model: ModelRow | None
    indicator: str
    indicators_fitted: list[str]
    window_start: datetime
    window_end: datetime
    histogram: Histogram
    history: list[ThresholdRow]
    shown_on_chart: list[ThresholdRow] = field(default_factory=list)
    # The class selector: None shows every sample against the global thresholds; a class index
    # shows that class's samples against the thresholds that judge it (its own where it has one).
    predicted_class: int | None = None
    classes: list[tuple[int, str]] = field(default_factory=list)  # classes with an own threshold, named

    def chart_value(self, row: ThresholdRow) -> float:
        """The value of `row` drawn on the chart: the threshold it judges the selected class by."""
        return row.thresholds.threshold_of(self.predicted_class)

    def class_rows(self, row: ThresholdRow) -> list[dict]:
        """Each predicted class of `row`'s fit window: its name, samples, the threshold that judges
        it and whose it is (own, or global with the reason), by class index."""
        if row.class_thresholds is None:
            return []
        document = row.class_thresholds
        return [{"predicted_class": index, "label": self.class_label(index), "samples": document.class_counts[key],
                 "threshold": row.thresholds.threshold_of(index), "own": key in document.thresholds,
                 "why_global": document.fallbacks.get(key, "")}
                for index, key in sorted((int(key), key) for key in document.class_counts)]

    def class_label(self, index: int | None) -> str:
        if index is None:
            return "global"
        return self.model.preprocessing.class_label(index) if self.model is not None else f"class {index}"


def thresholds_view(
    store: Store, model: ModelRow | None, indicator: str | None, default_indicator: str,
    window_hours: float, bins: int = 40, also_drawn: Sequence[float] = (), predicted_class: int | None = None,
) -> ThresholdsView:
    start, end = window_bounds(window_hours)
    if model is None:
        empty = Histogram(indicator=indicator or default_indicator, edges=[], counts=[], total=0)
        return ThresholdsView(None, indicator or default_indicator, [], start, end, empty, [])
    history = store.threshold_history(model.id)
    fitted = sorted({row.indicator for row in history}, key=INDICATORS.index)
    if indicator is None:
        active = [row for row in history if row.active]
        indicator = active[0].indicator if active else (fitted[0] if fitted else default_indicator)
    # The chart shows the thresholds of this indicator: the active one and the latest few before it.
    on_chart = [row for row in history if row.indicator == indicator][:6]
    owners = sorted({index for row in history if row.indicator == indicator
                     for index in row.thresholds.per_class})
    view = ThresholdsView(model=model, indicator=indicator, indicators_fitted=fitted, window_start=start,
                          window_end=end, histogram=Histogram(indicator, [], [], 0), history=history,
                          shown_on_chart=on_chart, predicted_class=predicted_class)
    histogram = store.score_histogram(
        model.id, indicator, start, end, bins=bins,
        include=[view.chart_value(row) for row in on_chart] + list(also_drawn), predicted_class=predicted_class,
    )
    return replace(view, histogram=histogram, classes=[(index, view.class_label(index)) for index in owners])


def labels_used(row: ThresholdRow) -> str:
    """'12 OOD, 40 ID' from the labels a threshold was fitted with; 'none' for a configured one."""
    return row.counts.labels_used() if row.counts is not None else "none"
