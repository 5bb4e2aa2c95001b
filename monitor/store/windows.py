"""Windows of scored samples, as the scheduled jobs read them: per-model counts, the indicator
values of a time window with current labels, label counts and the top-scored samples.

Mixed into `monitor.store.Store`, which supplies the engine and the read transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import func, select

from monitor.store.models import Sample, SampleImage, current_labels, flagged_count, indicator_column
from monitor.store.records import LABEL_CODES, LABELS, UNLABELLED


@dataclass(frozen=True)
class FlaggedCount:
    model_id: int
    total: int
    flagged: int


@dataclass(frozen=True)
class IndicatorWindow:
    """Indicator values of a window (oldest first), with current labels (1 OOD, 0 ID, -1 none)."""

    sample_ids: np.ndarray
    scored_at: list[datetime]
    values: dict[str, np.ndarray]  # canonical name -> float array, NaN where NULL
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])


@dataclass(frozen=True)
class TopSample:
    sample_id: int
    sample_key: str
    score: float
    scored_at: datetime
    label: str | None
    image: bytes | None


def _columns(indicators) -> list:
    return [indicator_column(name) for name in indicators]


class WindowsAggregate:
    """The window reads of `monitor.store.Store` (which supplies the engine and transactions)."""

    def flagged_counts(self, start: datetime, end: datetime) -> list[FlaggedCount]:
        """Per model: samples scored in [start, end) and how many of them were flagged."""
        with self._reading() as connection:
            rows = connection.execute(
                select(Sample.model_id, func.count(), flagged_count())
                .where(Sample.scored_at >= start, Sample.scored_at < end)
                .group_by(Sample.model_id)
            ).all()
        return [FlaggedCount(int(model_id), int(total), int(flagged or 0)) for model_id, total, flagged in rows]

    def latest_model_id(self, until: datetime | None = None) -> int | None:
        """The model of the most recently scored sample (before `until`)."""
        statement = select(Sample.model_id).order_by(Sample.scored_at.desc(), Sample.id.desc()).limit(1)
        if until is not None:
            statement = statement.where(Sample.scored_at < until)
        with self._reading() as connection:
            return connection.execute(statement).scalar()

    def indicator_window(self, model_id: int, indicators: list[str], *, start: datetime, end: datetime,
                         labelled_only: bool = False, max_rows: int | None = None) -> IndicatorWindow:
        """Samples of a model scored in [start, end), every asked indicator, current labels; oldest first.

        `labelled_only` keeps the samples with a label. `max_rows` bounds memory on busy streams:
        above it, an even subsample (every k-th sample id) is read, which keeps the distributions.
        """
        current = current_labels()
        columns = _columns(indicators)
        conditions = [Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end]
        if labelled_only:
            conditions.append(current.c.label.is_not(None))
        with self._reading() as connection:
            if max_rows is not None:
                total = connection.execute(select(func.count()).select_from(Sample)
                                           .outerjoin(current, current.c.sample_id == Sample.id)
                                           .where(*conditions)).scalar_one()
                stride = -(-int(total) // max_rows)
                if stride > 1:
                    conditions.append(Sample.id % stride == 0)
            rows = connection.execute(
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

    def label_counts(self, model_id: int, start: datetime, end: datetime) -> dict[str, int]:
        """Samples of a model scored in [start, end) by current label: ID, OOD, unlabelled."""
        current = current_labels()
        with self._reading() as connection:
            rows = connection.execute(
                select(current.c.label, func.count())
                .select_from(Sample).outerjoin(current, current.c.sample_id == Sample.id)
                .where(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end)
                .group_by(current.c.label)
            ).all()
        counts = {**{label: 0 for label in LABELS}, "unlabelled": 0}
        for label, count in rows:
            counts[label if label in LABELS else "unlabelled"] += int(count)
        return counts

    def top_scored_samples(self, model_id: int, indicator: str, start: datetime, end: datetime,
                           limit: int) -> list[TopSample]:
        """The `limit` samples of a model in [start, end) with the highest `indicator`, images included."""
        if limit <= 0:
            return []
        [column] = _columns([indicator])
        current = current_labels()
        with self._reading() as connection:
            rows = connection.execute(
                select(Sample.id, Sample.sample_key, column, Sample.scored_at, current.c.label, SampleImage.data)
                .outerjoin(current, current.c.sample_id == Sample.id)
                .outerjoin(SampleImage, SampleImage.sample_id == Sample.id)
                .where(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end,
                       column.is_not(None))
                .order_by(column.desc(), Sample.id)
                .limit(limit)
            ).all()
        return [TopSample(int(row[0]), row[1], float(row[2]), row[3], row[4], row[5]) for row in rows]
