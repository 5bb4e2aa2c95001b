"""Windows of scored samples, as the scheduled jobs read them: per-model counts, the indicator
values of a window with current labels, label counts and the top-scored samples.

One read selects a window and codes its labels (`_read_window`); `window_scores` (one indicator,
the window a fit reads) and `indicator_window` (several, NaN where NULL: the refit and report
jobs' member indicators and a proposal's shadow evaluation) are its two shapes.

Mixed into `monitor.store.Store`, which supplies the engine and the read transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import numpy as np
from sqlalchemy import Connection, func, select

from monitor.errors import InputError
from monitor.store.models import Sample, SampleImage, current_labels, flagged_count, indicator_column
from monitor.store.records import LABEL_CODES, LABELS, UNLABELLED, WindowScores


@dataclass(frozen=True)
class FlaggedCount:
    model_id: int
    total: int
    flagged: int


@dataclass(frozen=True)
class IndicatorWindow:
    """Indicator values of a window, oldest first: sample ids, predicted classes, current labels
    (1 OOD, 0 ID, -1 none), each asked indicator (float64, NaN where NULL) and the times of the
    first and last sample (None for an empty window)."""

    sample_ids: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    values: dict[str, np.ndarray]  # canonical name -> float array, NaN where NULL
    start: datetime | None
    end: datetime | None

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


def _plain_rows(connection: Connection, statement) -> list[tuple]:
    """The driver's own rows of a query whose columns are plain numbers (no result processing).

    SQLAlchemy binds the parameters; skipping its Row objects makes a 10^6-row window
    read about 40 % faster, which matters to the refit job.
    """
    result = connection.execute(statement)
    try:
        return result.cursor.fetchall()
    finally:
        result.close()


def _check_last(last: int | None) -> None:
    if last is not None and (not isinstance(last, int) or last < 1):
        raise InputError(f"window: last must be an integer >= 1, got {last!r}")


def _columns(indicators) -> list:
    return [indicator_column(name) for name in indicators]


class WindowsAggregate:
    """The window reads of `monitor.store.Store` (which supplies the engine and transactions)."""

    def window_scores(
        self,
        model_id: int,
        indicator: str,
        *,
        last: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> WindowScores:
        """An indicator's values over a window with the current labels (1 OOD, 0 ID, -1 none) and
        the predicted classes aligned: the window a fit reads.

        The window is the samples scored in [since, until), and of those the `last` most recent
        (both optional). Samples where the indicator is NULL are left out. Oldest first.
        """
        window = self._read_window(model_id, [indicator], since=since, until=until, last=last, complete=True)
        return WindowScores(indicator=indicator, sample_ids=window.sample_ids, values=window.values[indicator],
                            labels=window.labels, start=window.start, end=window.end, predicted=window.predicted)

    def indicator_window(self, model_id: int, indicators: Sequence[str], *, since: datetime | None = None,
                         until: datetime | None = None, last: int | None = None, labelled_only: bool = False,
                         max_rows: int | None = None) -> IndicatorWindow:
        """Samples of a model with every asked indicator (NaN where NULL) and current labels; oldest first.

        The window is the samples scored in [since, until) (both optional), and of those the `last`
        most recent. `labelled_only` keeps the samples whose current label is ID or OOD. `max_rows`
        bounds memory on busy streams: above it, an even subsample (every k-th sample id) is read,
        which keeps the distributions.
        """
        return self._read_window(model_id, indicators, since=since, until=until, last=last,
                                 labelled_only=labelled_only, max_rows=max_rows)

    def _read_window(self, model_id: int, indicators: Sequence[str], *, since: datetime | None = None,
                     until: datetime | None = None, last: int | None = None, labelled_only: bool = False,
                     max_rows: int | None = None, complete: bool = False) -> IndicatorWindow:
        """The one window read: selects the samples (model, [since, until), labelled only, an even
        subsample under `max_rows`, the `last` N), reads ids, predicted classes and the indicators as
        plain numbers, and codes the current labels (`_aligned_labels`). `complete` leaves out the
        samples where an asked indicator is NULL."""
        _check_last(last)
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
            raise InputError(f"window: max_rows must be an integer >= 1, got {max_rows!r}")
        columns = _columns(indicators)
        conditions = [Sample.model_id == model_id]
        if since is not None:
            conditions.append(Sample.scored_at >= since)
        if until is not None:
            conditions.append(Sample.scored_at < until)
        if complete:
            conditions.extend(column.is_not(None) for column in columns)
        if labelled_only:
            current = current_labels()
            conditions.append(Sample.id.in_(select(current.c.sample_id).where(current.c.label.is_not(None))))
        with self._reading() as connection:
            if max_rows is not None:
                total = connection.execute(select(func.count()).select_from(Sample).where(*conditions)).scalar_one()
                stride = -(-int(total) // max_rows)
                if stride > 1:
                    conditions.append(Sample.id % stride == 0)
            statement = select(Sample.id, Sample.predicted_class, *columns).where(*conditions)
            if last is not None:
                statement = statement.order_by(Sample.scored_at.desc(), Sample.id.desc()).limit(last)
            else:
                statement = statement.order_by(Sample.scored_at, Sample.id)
            # float64 throughout: NULL becomes NaN, and ids and classes are exact far beyond their range.
            rows = np.array(_plain_rows(connection, statement), dtype=np.float64).reshape(-1, 2 + len(columns))
            if last is not None:
                rows = rows[::-1]
            sample_ids = rows[:, 0].astype(np.int64)
            predicted = rows[:, 1].astype(np.int64)
            values = {name: np.ascontiguousarray(rows[:, 2 + index]) for index, name in enumerate(indicators)}
            labels = np.full(sample_ids.shape[0], UNLABELLED, dtype=np.int8)
            start = end = None
            if sample_ids.size:
                labels = self._aligned_labels(connection, sample_ids)
                first, final = int(sample_ids[0]), int(sample_ids[-1])
                times = dict(connection.execute(
                    select(Sample.id, Sample.scored_at).where(Sample.id.in_([first, final]))).all())
                start, end = times[first], times[final]
        return IndicatorWindow(sample_ids, predicted, labels, values, start, end)

    @staticmethod
    def _aligned_labels(connection: Connection, sample_ids: np.ndarray) -> np.ndarray:
        """Current label codes (LABEL_CODES; -1 none) for the given sample ids: the one place a
        window's labels are coded. Few labels, many samples: the labels of the id range are looked
        up rather than joined to every sample."""
        labels = np.full(sample_ids.shape[0], UNLABELLED, dtype=np.int8)
        low, high = int(sample_ids.min()), int(sample_ids.max())
        current = current_labels(Sample.id >= low, Sample.id <= high)
        found = connection.execute(select(current.c.sample_id, current.c.label)).all()
        if not found:
            return labels
        order = np.argsort(sample_ids, kind="stable")
        sorted_ids = sample_ids[order]
        labelled_ids = np.array([sample_id for sample_id, _ in found], dtype=np.int64)
        codes = np.array([LABEL_CODES.get(label, UNLABELLED) for _, label in found], dtype=np.int8)
        positions = np.searchsorted(sorted_ids, labelled_ids)
        inside = positions < sorted_ids.shape[0]
        inside[inside] = sorted_ids[positions[inside]] == labelled_ids[inside]
        labels[order[positions[inside]]] = codes[inside]
        return labels

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
