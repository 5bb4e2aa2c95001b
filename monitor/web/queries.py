"""The reads and the label writes behind the operator pages, in SQLAlchemy Core over the store's models.

Every value that reaches SQL is a bound parameter or an expression built here from a
validated filter (monitor.web.filters); no request value becomes SQL text. Reads return the
store's plain records (monitor.store.records), so the pages and the API speak the same
vocabulary as the rest of the service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import BigInteger, Connection, Engine, Integer, and_, case, cast, exists, func, select
from sqlalchemy.sql.elements import ColumnElement

from monitor.clock import utc_now
from monitor.names import INDICATORS
from monitor.store.models import (
    INDICATOR_COLUMNS,
    Alert,
    JobRun,
    Label,
    MonitoredModel,
    Report,
    Sample,
    SampleImage,
    Threshold,
    current_label_of_sample,
    current_labels,
)
from monitor.store.records import (
    LABELS,
    AlertRow,
    JobRunRow,
    LabelRow,
    ModelRow,
    RateBucket,
    ReportRow,
    SampleSummary,
    SourcePosition,
    StoredImage,
    ThresholdRow,
)
from monitor.store.engine import WRITE_OPTION
from monitor.web.filters import QueueFilters

log = logging.getLogger(__name__)


class LabelConflict(Exception):
    """A label change that cannot be made as asked (e.g. nothing to undo); the message says why."""


# --- models ---------------------------------------------------------------------------------


def list_models(connection: Connection) -> list[ModelRow]:
    """Every monitored model, newest first (the pages show the newest unless asked)."""
    query = select(MonitoredModel).order_by(MonitoredModel.created_at.desc(), MonitoredModel.id.desc())
    return [
        ModelRow(id=m.id, name=m.name, fingerprint=m.fingerprint, preprocessing=m.preprocessing,
                 created_at=m.created_at)
        for m in _orm_rows(connection, query)
    ]


# --- overview -------------------------------------------------------------------------------


def _epoch_seconds(connection: Connection, column) -> ColumnElement:
    # SQLite keeps naive UTC text; PostgreSQL a timestamptz. Both become whole epoch seconds.
    if connection.dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


def volume_buckets(
    connection: Connection, model_id: int, start: datetime, end: datetime, bucket_s: int
) -> list[RateBucket]:
    """Samples scored and flagged per bucket of `bucket_s` seconds in [start, end); empty buckets as zeros."""
    origin = int(start.timestamp()) // bucket_s * bucket_s
    origin_at = datetime.fromtimestamp(origin, timezone.utc)
    if connection.dialect.name == "postgresql" and (connection.dialect.server_version_info or (0,)) >= (14,):
        # date_bin works on the timestamp's integer microseconds: about twice as fast as epoch arithmetic.
        bucket = func.date_bin(timedelta(seconds=bucket_s), Sample.scored_at, origin_at).label("bucket")
    else:
        bucket = ((_epoch_seconds(connection, Sample.scored_at) - origin) // bucket_s).label("bucket")
    query = (
        select(bucket, func.count().label("total"), func.sum(case((Sample.flagged, 1), else_=0)).label("flagged"))
        .where(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end)
        .group_by(bucket)
    )
    found: dict[int, tuple[int, int]] = {}
    for row in connection.execute(query):
        key = row.bucket
        index = int((_utc(key) - origin_at).total_seconds()) // bucket_s if isinstance(key, datetime) else int(key)
        found[index] = (int(row.total), int(row.flagged or 0))
    count = max(1, -(-(int(end.timestamp()) - origin) // bucket_s))
    return [
        RateBucket(
            start=origin_at + timedelta(seconds=index * bucket_s),
            total=found.get(index, (0, 0))[0],
            flagged=found.get(index, (0, 0))[1],
        )
        for index in range(count)
    ]


@dataclass(frozen=True)
class WindowCounts:
    scored: int
    flagged: int
    labelled: int


def window_counts(
    connection: Connection, model_id: int, start: datetime, end: datetime, buckets: Sequence[RateBucket] | None = None
) -> WindowCounts:
    """Scored, flagged and labelled samples in [start, end); reuses `buckets` of the same window if given."""
    in_window = and_(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end)
    if buckets is None:
        scored, flagged = connection.execute(
            select(func.count(), func.sum(case((Sample.flagged, 1), else_=0))).where(in_window)
        ).one()
    else:
        scored, flagged = sum(b.total for b in buckets), sum(b.flagged for b in buckets)
    # A sample counts while its current label is a verdict: an undone first label leaves it unlabelled.
    current = current_labels(in_window)
    labelled = connection.execute(select(func.count()).select_from(current).where(current.c.label.is_not(None))).scalar_one()
    return WindowCounts(scored=int(scored), flagged=int(flagged or 0), labelled=int(labelled))


# --- thresholds -----------------------------------------------------------------------------


def _threshold_row(t: Threshold) -> ThresholdRow:
    return ThresholdRow(
        id=t.id, model_id=t.model_id, indicator=t.indicator, method=t.method, value=t.value,
        parameters=t.parameters, counts=t.counts, window_start=t.window_start,
        window_end=t.window_end, active=t.active, created_at=t.created_at, fitted_by=t.fitted_by,
        summary_weights_id=t.summary_weights_id, class_thresholds=t.class_thresholds,
    )


def active_thresholds(connection: Connection, model_id: int) -> list[ThresholdRow]:
    query = select(Threshold).where(Threshold.model_id == model_id, Threshold.active).order_by(Threshold.indicator)
    return [_threshold_row(t) for t in _orm_rows(connection, query)]


def threshold_history(
    connection: Connection, model_id: int, indicator: str | None = None, limit: int = 200
) -> list[ThresholdRow]:
    query = select(Threshold).where(Threshold.model_id == model_id)
    if indicator is not None:
        query = query.where(Threshold.indicator == indicator)
    query = query.order_by(Threshold.created_at.desc(), Threshold.id.desc()).limit(limit)
    return [_threshold_row(t) for t in _orm_rows(connection, query)]


def _orm_rows(connection: Connection, query) -> list[Any]:
    # ORM entities from a Core connection, without a long-lived Session.
    from sqlalchemy.orm import Session

    with Session(bind=connection) as session:
        rows = list(session.scalars(query).all())
        session.expunge_all()
    return rows


@dataclass(frozen=True)
class Histogram:
    indicator: str
    edges: list[float]
    counts: list[int]
    total: int


def score_histogram(
    connection: Connection,
    model_id: int,
    indicator: str,
    start: datetime,
    end: datetime,
    bins: int = 40,
    include: Sequence[float] = (),
    predicted_class: int | None = None,
) -> Histogram:
    """Counts of `indicator` in `bins` equal-width bins over [start, end), computed in SQL; only
    the samples predicted as `predicted_class` when it is given.

    The range covers the data and the values in `include` (the thresholds drawn on it).
    """
    column = INDICATOR_COLUMNS[indicator]
    in_window = and_(
        Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end, column.is_not(None),
        *([Sample.predicted_class == predicted_class] if predicted_class is not None else []),
    )
    low, high, total = connection.execute(select(func.min(column), func.max(column), func.count(column)).where(in_window)).one()
    if not total:
        return Histogram(indicator=indicator, edges=[], counts=[], total=0)
    finite = [value for value in include if value is not None]
    low = min([float(low), *finite])
    high = max([float(high), *finite])
    width = (high - low) / bins if high > low else 1.0
    scaled = (column - low) / width
    # PostgreSQL's CAST rounds, SQLite's truncates; values are >= low, so floor on PostgreSQL only.
    index = cast(scaled if connection.dialect.name == "sqlite" else func.floor(scaled), Integer)
    clamped = case((index >= bins, bins - 1), else_=index).label("bin")
    counts = [0] * bins
    for row in connection.execute(select(clamped, func.count()).where(in_window).group_by(clamped)):
        counts[max(0, min(bins - 1, int(row[0])))] += int(row[1])
    edges = [low + width * i for i in range(bins + 1)]
    return Histogram(indicator=indicator, edges=edges, counts=counts, total=int(total))


# --- the flagged queue ----------------------------------------------------------------------




def _queue_conditions(model_id: int, filters: QueueFilters) -> list[ColumnElement]:
    conditions: list[ColumnElement] = [Sample.model_id == model_id]
    # Named samples are shown flagged or not (those a shadow evaluation says change side).
    conditions.append(Sample.flagged if filters.sample_ids is None else Sample.id.in_(filters.sample_ids))
    if filters.since is not None:
        conditions.append(Sample.scored_at >= filters.since)
    if filters.until is not None:
        conditions.append(Sample.scored_at < filters.until)
    if filters.predicted_class is not None:
        conditions.append(Sample.predicted_class == filters.predicted_class)
    if filters.min_score is not None:
        conditions.append(Sample.score >= filters.min_score)
    if filters.max_score is not None:
        conditions.append(Sample.score <= filters.max_score)
    current = current_label_of_sample()
    if filters.labelled == "no":
        conditions.append(current.is_(None))
    elif filters.labelled == "yes":
        conditions.append(current.is_not(None))
    elif filters.labelled in LABELS:
        conditions.append(current == filters.labelled)
    return conditions


_SORTS = {
    "time_desc": (Sample.scored_at.desc(), Sample.id.desc()),
    "time_asc": (Sample.scored_at.asc(), Sample.id.asc()),
    "score_desc": (Sample.score.desc(), Sample.id.desc()),
    "score_asc": (Sample.score.asc(), Sample.id.asc()),
}


@dataclass(frozen=True)
class QueueResult:
    items: list[SampleSummary]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def flagged_queue(connection: Connection, model_id: int, filters: QueueFilters) -> QueueResult:
    conditions = _queue_conditions(model_id, filters)
    total = connection.execute(select(func.count()).select_from(Sample).where(*conditions)).scalar_one()
    # The page's ids first (index order, offset skipped cheaply), then labels and images for those rows only.
    page_ids = (
        select(Sample.id)
        .where(*conditions)
        .order_by(*_SORTS[filters.sort])
        .limit(filters.per_page)
        .offset((filters.page - 1) * filters.per_page)
        .subquery()
    )
    has_image = exists().where(SampleImage.sample_id == Sample.id)
    query = (
        select(
            Sample.id, Sample.model_id, Sample.sample_key, Sample.scored_at, Sample.predicted_class, Sample.score,
            Sample.score_indicator, Sample.flagged, current_label_of_sample().label("label"), has_image.label("has_image"),
        )
        .join(page_ids, page_ids.c.id == Sample.id)
        .order_by(*_SORTS[filters.sort])
    )
    items = [
        SampleSummary(
            id=row.id, model_id=row.model_id, sample_key=row.sample_key, scored_at=_utc(row.scored_at),
            predicted_class=row.predicted_class, score=row.score, score_indicator=row.score_indicator,
            flagged=bool(row.flagged), label=row.label, has_image=bool(row.has_image),
        )
        for row in connection.execute(query)
    ]
    return QueueResult(items=items, total=int(total), page=filters.page, per_page=filters.per_page)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- one sample -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleView:
    id: int
    model_id: int
    position: SourcePosition
    sample_key: str
    produced_at: datetime | None
    received_at: datetime
    scored_at: datetime
    predicted_class: int
    scores: dict[str, float | None]
    score: float | None
    score_indicator: str | None
    flagged: bool
    threshold_id: int | None
    image_content_type: str | None
    image_width: int | None
    image_height: int | None
    labels: list[LabelRow]

    @property
    def label(self) -> str | None:
        return self.labels[-1].label if self.labels else None


def get_sample(connection: Connection, sample_id: int) -> SampleView | None:
    found = _orm_rows(connection, select(Sample).where(Sample.id == sample_id))
    if not found:
        return None
    row = found[0]
    image = connection.execute(
        select(SampleImage.content_type, SampleImage.width, SampleImage.height).where(SampleImage.sample_id == sample_id)
    ).first()
    return SampleView(
        id=row.id, model_id=row.model_id,
        position=SourcePosition(row.source_topic, row.source_partition, row.source_offset),
        sample_key=row.sample_key, produced_at=row.produced_at, received_at=row.received_at, scored_at=row.scored_at,
        predicted_class=row.predicted_class,
        scores={name: getattr(row, INDICATOR_COLUMNS[name].key) for name in INDICATORS},
        score=row.score, score_indicator=row.score_indicator, flagged=bool(row.flagged),
        threshold_id=row.threshold_id,
        image_content_type=image.content_type if image else None,
        image_width=image.width if image else None, image_height=image.height if image else None,
        labels=label_history(connection, sample_id),
    )


def get_image(connection: Connection, sample_id: int) -> StoredImage | None:
    row = connection.execute(
        select(SampleImage.content_type, SampleImage.data, SampleImage.width, SampleImage.height, SampleImage.stored_at)
        .where(SampleImage.sample_id == sample_id)
    ).first()
    if row is None:
        return None
    return StoredImage(
        content_type=row.content_type, data=bytes(row.data), width=row.width, height=row.height, stored_at=row.stored_at
    )


def percentiles_in_window(
    connection: Connection, model_id: int, values: dict[str, float | None], start: datetime, end: datetime
) -> dict[str, float | None]:
    """For each indicator value: the percentage of the window's samples at or below it (one query)."""
    present = {name: value for name, value in values.items() if value is not None}
    if not present:
        return {name: None for name in values}
    columns = []
    for name, value in present.items():
        column = INDICATOR_COLUMNS[name]
        columns.append(func.sum(case((column <= value, 1), else_=0)))
        columns.append(func.count(column))
    row = connection.execute(
        select(*columns).where(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end)
    ).one()
    result: dict[str, float | None] = {name: None for name in values}
    for index, name in enumerate(present):
        at_or_below, count = row[2 * index], row[2 * index + 1]
        result[name] = 100.0 * float(at_or_below or 0) / count if count else None
    return result


# --- labels ---------------------------------------------------------------------------------


def label_history(connection: Connection, sample_id: int) -> list[LabelRow]:
    query = select(Label).where(Label.sample_id == sample_id).order_by(Label.id)
    return [
        LabelRow(id=r.id, sample_id=r.sample_id, label=r.label, labelled_by=r.labelled_by, labelled_at=r.labelled_at, note=r.note)
        for r in _orm_rows(connection, query)
    ]


def sample_exists(connection: Connection, sample_id: int) -> bool:
    return connection.execute(select(Sample.id).where(Sample.id == sample_id)).first() is not None


def undo_label(engine: Engine, sample_id: int, requested_by: str, may_undo_others: bool) -> list[LabelRow]:
    """Take back the latest label by appending the one it replaced; the history keeps both.

    Undoing a first label appends a row without a label: the sample is unlabelled again.
    Raises LabelConflict when the sample has no label, or the latest label is someone
    else's and the caller may not undo it.
    """
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as connection, connection.begin():
        # Lock the sample (PostgreSQL; SQLite's writer lock already serialises) so a label given
        # meanwhile cannot slip between reading the history and appending the undo.
        connection.execute(select(Sample.id).where(Sample.id == sample_id).with_for_update())
        history = label_history(connection, sample_id)
        if not history:
            raise LabelConflict("the sample has no label to undo")
        latest = history[-1]
        if latest.labelled_by != requested_by and not may_undo_others:
            raise LabelConflict(
                f"the latest label was given by {latest.labelled_by}; only an admin may undo another operator's label"
            )
        restored = history[-2].label if len(history) > 1 else None  # None: unlabelled again
        connection.execute(
            Label.__table__.insert().values(
                sample_id=sample_id, label=restored, labelled_by=requested_by, labelled_at=utc_now(),
                note=f"undo of label #{latest.id} ({latest.label or 'cleared'} by {latest.labelled_by})",
            )
        )
        return label_history(connection, sample_id)


# --- jobs, alerts, reports ------------------------------------------------------------------


def recent_job_runs(connection: Connection, limit: int = 10) -> list[JobRunRow]:
    query = select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(limit)
    return [
        JobRunRow(id=r.id, job=r.job, started_at=r.started_at, finished_at=r.finished_at, outcome=r.outcome, error=r.error,
                  runner=r.runner)
        for r in _orm_rows(connection, query)
    ]


def recent_alerts(connection: Connection, limit: int = 10, offset: int = 0) -> list[AlertRow]:
    query = select(Alert).order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit).offset(offset)
    return [
        AlertRow(id=r.id, kind=r.kind, payload=r.payload, created_at=r.created_at, published_at=r.published_at)
        for r in _orm_rows(connection, query)
    ]


def _report_row(r: Report) -> ReportRow:
    return ReportRow(
        id=r.id, period_start=r.period_start, period_end=r.period_end, summary=r.summary,
        file_path=r.file_path, created_at=r.created_at,
    )


def list_reports(connection: Connection, limit: int = 50, offset: int = 0) -> list[ReportRow]:
    query = select(Report).order_by(Report.created_at.desc(), Report.id.desc()).limit(limit).offset(offset)
    return [_report_row(r) for r in _orm_rows(connection, query)]


def get_report(connection: Connection, report_id: int) -> ReportRow | None:
    rows = _orm_rows(connection, select(Report).where(Report.id == report_id))
    return _report_row(rows[0]) if rows else None


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


def window_bounds(hours: float, end: datetime | None = None) -> tuple[datetime, datetime]:
    end = end or utc_now()
    return end - timedelta(hours=hours), end
