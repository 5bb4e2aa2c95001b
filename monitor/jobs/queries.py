"""Queries of the scheduled jobs that the store (monitor.store.Store) does not offer, written
against its models; everything else the jobs call on the Store itself.

Every function takes the store (for its engine) and opens one short unit of work.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import numpy as np
from sqlalchemy import Engine, Integer, cast, func, select
from sqlalchemy.orm import Session

from monitor.store.engine import WRITE_OPTION
from monitor.store.models import INDICATOR_COLUMNS, Alert, JobRun, Sample, SampleImage, current_labels
from monitor.store.payloads import OodRateAlert
from monitor.store.records import LABEL_CODES, LABELS, UNLABELLED, JobRunRow


def _engine(store: Any) -> Engine:
    return store if isinstance(store, Engine) else store.engine


@contextmanager
def _reading(store: Any) -> Iterator[Session]:
    with Session(_engine(store)) as session:
        yield session


@contextmanager
def _writing(store: Any) -> Iterator[Session]:
    # On SQLite the write option takes the write lock at BEGIN (no SQLITE_BUSY upgrade later).
    with Session(_engine(store).execution_options(**{WRITE_OPTION: True})) as session, session.begin():
        yield session


# --- job runs ------------------------------------------------------------------------------------


def close_interrupted_runs(store: Any, job: str, reason: str, now: datetime) -> list[JobRunRow]:
    """Mark as failed the runs of `job` still 'running'. Call only while holding the job's lock:
    then no live process is running it, so those runs died with their process."""
    with _writing(store) as session:
        runs = session.scalars(select(JobRun).where(JobRun.job == job, JobRun.outcome == "running")).all()
        for run in runs:
            run.outcome, run.error, run.finished_at = "failed", reason, now
        return [_run_row(run) for run in runs]


def run_started_since(store: Any, job: str, moment: datetime) -> bool:
    with _reading(store) as session:
        return session.scalar(
            select(func.count()).select_from(JobRun).where(JobRun.job == job, JobRun.started_at >= moment)
        ) > 0


def _run_row(run: JobRun) -> JobRunRow:
    return JobRunRow(id=run.id, job=run.job, started_at=run.started_at, finished_at=run.finished_at,
                     outcome=run.outcome, error=run.error, runner=run.runner)


# --- alerts --------------------------------------------------------------------------------------


def latest_rate_alert(store: Any, model_id: int) -> OodRateAlert | None:
    """The newest ood_rate alert of a model (its episode's state). The model is matched in Python:
    JSON operators differ between SQLite and PostgreSQL; the scan stops at the first match."""
    with _reading(store) as session:
        query = select(Alert.payload).where(Alert.kind == OodRateAlert.KIND).order_by(Alert.id.desc())
        for document in session.scalars(query.execution_options(yield_per=200)):
            if document.payload.model_id == model_id:
                return document.payload
    return None


# --- windows of samples --------------------------------------------------------------------------


@dataclass(frozen=True)
class FlaggedCount:
    model_id: int
    total: int
    flagged: int


def flagged_counts(store: Any, start: datetime, end: datetime) -> list[FlaggedCount]:
    """Per model: samples scored in [start, end) and how many of them were flagged."""
    with _reading(store) as session:
        rows = session.execute(
            select(Sample.model_id, func.count(), func.sum(cast(Sample.flagged, Integer)))
            .where(Sample.scored_at >= start, Sample.scored_at < end)
            .group_by(Sample.model_id)
        ).all()
    return [FlaggedCount(int(model_id), int(total), int(flagged or 0)) for model_id, total, flagged in rows]


def models_scored_since(store: Any, start: datetime | None) -> list[int]:
    with _reading(store) as session:
        query = select(Sample.model_id).distinct()
        if start is not None:
            query = query.where(Sample.scored_at >= start)
        return sorted(int(model_id) for model_id in session.scalars(query))


def latest_model_id(store: Any, until: datetime | None = None) -> int | None:
    """The model of the most recently scored sample (before `until`)."""
    query = select(Sample.model_id).order_by(Sample.scored_at.desc(), Sample.id.desc()).limit(1)
    if until is not None:
        query = query.where(Sample.scored_at < until)
    with _reading(store) as session:
        return session.scalar(query)


@dataclass(frozen=True)
class IndicatorWindow:
    """Indicator values of a window (oldest first), with current labels (1 OOD, 0 ID, -1 none)."""

    sample_ids: np.ndarray
    scored_at: list[datetime]
    values: dict[str, np.ndarray]  # canonical name -> float array, NaN where NULL
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])


def indicator_window(store: Any, model_id: int, indicators: list[str], *, start: datetime, end: datetime,
                     labelled_only: bool = False, max_rows: int | None = None) -> IndicatorWindow:
    """Samples of a model scored in [start, end), every asked indicator, current labels; oldest first.

    `labelled_only` keeps the samples with a label. `max_rows` bounds memory on busy streams:
    above it, an even subsample (every k-th sample id) is read, which keeps the distributions.
    """
    current = current_labels()
    columns = [INDICATOR_COLUMNS[name] for name in indicators]
    conditions = [Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end]
    if labelled_only:
        conditions.append(current.c.label.is_not(None))
    with _reading(store) as session:
        if max_rows is not None:
            total = session.scalar(select(func.count()).select_from(Sample)
                                   .outerjoin(current, current.c.sample_id == Sample.id).where(*conditions))
            stride = -(-int(total) // max_rows)
            if stride > 1:
                conditions.append(Sample.id % stride == 0)
        rows = session.execute(
            select(Sample.id, Sample.scored_at, current.c.label, *columns)
            .outerjoin(current, current.c.sample_id == Sample.id)
            .where(*conditions)
            .order_by(Sample.scored_at, Sample.id)
        ).all()
    sample_ids = np.array([row[0] for row in rows], dtype=np.int64)
    labels = np.array([LABEL_CODES.get(row[2], UNLABELLED) for row in rows], dtype=np.int64)
    values = {
        name: np.array([row[3 + index] for row in rows], dtype=float)  # None becomes NaN
        for index, name in enumerate(indicators)
    }
    return IndicatorWindow(sample_ids, [row[1] for row in rows], values, labels)


def label_counts(store: Any, model_id: int, start: datetime, end: datetime) -> dict[str, int]:
    """Samples of a model scored in [start, end) by current label: ID, OOD, unlabelled."""
    current = current_labels()
    with _reading(store) as session:
        rows = session.execute(
            select(current.c.label, func.count())
            .select_from(Sample).outerjoin(current, current.c.sample_id == Sample.id)
            .where(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end)
            .group_by(current.c.label)
        ).all()
    counts = {**{label: 0 for label in LABELS}, "unlabelled": 0}
    for label, count in rows:
        counts[label if label in LABELS else "unlabelled"] += int(count)
    return counts


@dataclass(frozen=True)
class TopSample:
    sample_id: int
    sample_key: str
    score: float
    scored_at: datetime
    label: str | None
    image: bytes | None


def top_scored_samples(store: Any, model_id: int, indicator: str, start: datetime, end: datetime,
                       limit: int) -> list[TopSample]:
    """The `limit` samples of a model in [start, end) with the highest `indicator`, images included."""
    if limit <= 0:
        return []
    column = INDICATOR_COLUMNS[indicator]
    current = current_labels()
    with _reading(store) as session:
        rows = session.execute(
            select(Sample.id, Sample.sample_key, column, Sample.scored_at, current.c.label, SampleImage.data)
            .outerjoin(current, current.c.sample_id == Sample.id)
            .outerjoin(SampleImage, SampleImage.sample_id == Sample.id)
            .where(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end,
                   column.is_not(None))
            .order_by(column.desc(), Sample.id)
            .limit(limit)
        ).all()
    return [TopSample(int(row[0]), row[1], float(row[2]), row[3], row[4], row[5]) for row in rows]
