"""Reads of scored samples: one sample with its image and labels, the flagged queue, and the
window aggregates the operator pages chart (volume and flagged share per time bucket, counts,
a score histogram, percentiles).

Mixed into `monitor.store.Store`, which supplies the engine and the read transaction. Every
value that reaches SQL is a bound parameter or an expression built here from a checked
`QueueQuery`; no request value becomes SQL text.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Sequence

from sqlalchemy import BigInteger, Connection, Integer, and_, case, cast, exists, func, select
from sqlalchemy.sql.elements import ColumnElement

from monitor.errors import InputError
from monitor.names import INDICATORS
from monitor.store.labels import label_rows
from monitor.store.models import (
    INDICATOR_COLUMNS,
    Sample,
    SampleImage,
    current_label_of_sample,
    current_labels,
    flagged_count,
    indicator_column,
)
from monitor.store.records import (
    LABELS,
    Histogram,
    QueuePage,
    QueueQuery,
    RateBucket,
    SampleDetail,
    SampleSummary,
    SourcePosition,
    StoredImage,
    WindowCounts,
)

_SORTS = {
    "time_desc": (Sample.scored_at.desc(), Sample.id.desc()),
    "time_asc": (Sample.scored_at.asc(), Sample.id.asc()),
    "score_desc": (Sample.score.desc(), Sample.id.desc()),
    "score_asc": (Sample.score.asc(), Sample.id.asc()),
}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _epoch_seconds(connection: Connection, column) -> ColumnElement:
    # SQLite keeps naive UTC text; PostgreSQL a timestamptz. Both become whole epoch seconds.
    if connection.dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


def _queue_conditions(model_id: int, query: QueueQuery) -> list[ColumnElement]:
    conditions: list[ColumnElement] = [Sample.model_id == model_id]
    # Named samples are shown flagged or not (those a shadow evaluation says change side).
    conditions.append(Sample.flagged if query.sample_ids is None else Sample.id.in_(query.sample_ids))
    if query.since is not None:
        conditions.append(Sample.scored_at >= query.since)
    if query.until is not None:
        conditions.append(Sample.scored_at < query.until)
    if query.predicted_class is not None:
        conditions.append(Sample.predicted_class == query.predicted_class)
    if query.min_score is not None:
        conditions.append(Sample.score >= query.min_score)
    if query.max_score is not None:
        conditions.append(Sample.score <= query.max_score)
    if query.labelled in ("no", "yes", *LABELS):
        # The samples whose current label is a verdict (or this verdict), read once as a set: a
        # per-row lookup of the latest label made counting a large queue many times slower.
        verdicts = current_labels()
        given = select(verdicts.c.sample_id).where(
            verdicts.c.label == query.labelled if query.labelled in LABELS else verdicts.c.label.is_not(None))
        conditions.append(Sample.id.not_in(given) if query.labelled == "no" else Sample.id.in_(given))
    return conditions


class SamplesAggregate:
    """The sample reads of `monitor.store.Store` (which supplies the engine and transactions)."""

    # --- one sample ------------------------------------------------------------------------

    def count_samples(self, model_id: int | None = None, *, flagged: bool | None = None) -> int:
        statement = select(func.count()).select_from(Sample)
        if model_id is not None:
            statement = statement.where(Sample.model_id == model_id)
        if flagged is not None:
            statement = statement.where(Sample.flagged == flagged)
        with self._reading() as connection:
            return int(connection.execute(statement).scalar_one())

    def sample_exists(self, sample_id: int) -> bool:
        with self._reading() as connection:
            return connection.execute(select(Sample.id).where(Sample.id == sample_id)).first() is not None

    def find_sample(self, position: SourcePosition) -> int | None:
        """The id of the sample stored for a source position, if any."""
        with self._reading() as connection:
            return connection.execute(
                select(Sample.id).where(
                    Sample.source_topic == position.topic,
                    Sample.source_partition == position.partition,
                    Sample.source_offset == position.offset,
                )
            ).scalar_one_or_none()

    def get_sample(self, sample_id: int) -> SampleDetail | None:
        """A sample with every indicator value, what its kept image is (if any) and its label history."""
        with self._reading() as connection:
            row = connection.execute(select(Sample.__table__).where(Sample.id == sample_id)).first()
            if row is None:
                return None
            image = connection.execute(
                select(SampleImage.content_type, SampleImage.width, SampleImage.height)
                .where(SampleImage.sample_id == sample_id)
            ).first()
            labels = label_rows(connection, sample_id)
        values = row._mapping
        return SampleDetail(
            id=values["id"], model_id=values["model_id"],
            position=SourcePosition(values["source_topic"], values["source_partition"], values["source_offset"]),
            sample_key=values["sample_key"], produced_at=values["produced_at"], received_at=values["received_at"],
            scored_at=values["scored_at"], predicted_class=values["predicted_class"],
            scores={name: values[INDICATOR_COLUMNS[name].name] for name in INDICATORS},
            score=values["score"], score_indicator=values["score_indicator"], flagged=bool(values["flagged"]),
            threshold_id=values["threshold_id"],
            image_content_type=image.content_type if image else None,
            image_width=image.width if image else None, image_height=image.height if image else None,
            labels=labels,
        )

    def get_image(self, sample_id: int) -> StoredImage | None:
        """The sample's kept image with its stored type; None when none is kept (or no such sample)."""
        with self._reading() as connection:
            row = connection.execute(
                select(SampleImage.content_type, SampleImage.data, SampleImage.width, SampleImage.height,
                       SampleImage.stored_at).where(SampleImage.sample_id == sample_id)
            ).first()
        if row is None:
            return None
        return StoredImage(content_type=row.content_type, data=bytes(row.data), width=row.width, height=row.height,
                           stored_at=row.stored_at)

    # --- the flagged queue -----------------------------------------------------------------

    def flagged_queue(self, model_id: int, query: QueueQuery = QueueQuery()) -> QueuePage:
        """One numbered page of a model's flagged samples, filtered and sorted as `query` says."""
        conditions = _queue_conditions(model_id, query)
        # The page's ids first (index order, offset skipped cheaply), then labels and images for those rows only.
        page_ids = (
            select(Sample.id)
            .where(*conditions)
            .order_by(*_SORTS[query.sort])
            .limit(query.per_page)
            .offset((query.page - 1) * query.per_page)
            .subquery()
        )
        has_image = exists().where(SampleImage.sample_id == Sample.id)
        statement = (
            select(
                Sample.id, Sample.model_id, Sample.sample_key, Sample.scored_at, Sample.predicted_class, Sample.score,
                Sample.score_indicator, Sample.flagged, current_label_of_sample().label("label"),
                has_image.label("has_image"),
            )
            .join(page_ids, page_ids.c.id == Sample.id)
            .order_by(*_SORTS[query.sort])
        )
        with self._reading() as connection:
            total = connection.execute(select(func.count()).select_from(Sample).where(*conditions)).scalar_one()
            items = [
                SampleSummary(
                    id=row.id, model_id=row.model_id, sample_key=row.sample_key, scored_at=_utc(row.scored_at),
                    predicted_class=row.predicted_class, score=row.score, score_indicator=row.score_indicator,
                    flagged=bool(row.flagged), label=row.label, has_image=bool(row.has_image),
                )
                for row in connection.execute(statement)
            ]
        return QueuePage(items=items, total=int(total), page=query.page, per_page=query.per_page)

    # --- windows -----------------------------------------------------------------------------

    def ood_rate(self, model_id: int, *, since: datetime, until: datetime, bucket_seconds: int = 3600) -> list[RateBucket]:
        """Samples scored and flagged per bucket of `bucket_seconds` in [since, until), the buckets
        aligned on the UTC epoch; every bucket of the window is listed, empty ones as zeros."""
        if not isinstance(bucket_seconds, int) or bucket_seconds < 1:
            raise InputError(f"bucket_seconds: must be an integer >= 1, got {bucket_seconds!r}")
        origin = int(since.timestamp()) // bucket_seconds * bucket_seconds
        origin_at = datetime.fromtimestamp(origin, timezone.utc)
        with self._reading() as connection:
            if connection.dialect.name == "postgresql" and (connection.dialect.server_version_info or (0,)) >= (14,):
                # date_bin works on the timestamp's integer microseconds: about twice as fast as epoch arithmetic.
                bucket = func.date_bin(timedelta(seconds=bucket_seconds), Sample.scored_at, origin_at).label("bucket")
            else:
                bucket = ((_epoch_seconds(connection, Sample.scored_at) - origin) // bucket_seconds).label("bucket")
            statement = (
                select(bucket, func.count().label("total"),
                       flagged_count().label("flagged"))
                .where(Sample.model_id == model_id, Sample.scored_at >= since, Sample.scored_at < until)
                .group_by(bucket)
            )
            found: dict[int, tuple[int, int]] = {}
            for row in connection.execute(statement):
                key = row.bucket
                index = (int((_utc(key) - origin_at).total_seconds()) // bucket_seconds if isinstance(key, datetime)
                         else int(key))
                found[index] = (int(row.total), int(row.flagged or 0))
        # Up to the bucket holding `until` (exclusive), to the microsecond: a window ending just past a
        # bucket's start still shows that bucket.
        count = max(1, math.ceil((until.timestamp() - origin) / bucket_seconds))
        return [
            RateBucket(start=origin_at + timedelta(seconds=index * bucket_seconds),
                       total=found.get(index, (0, 0))[0], flagged=found.get(index, (0, 0))[1])
            for index in range(count)
        ]

    def window_counts(self, model_id: int, start: datetime, end: datetime,
                      buckets: Sequence[RateBucket] | None = None) -> WindowCounts:
        """Scored, flagged and labelled samples in [start, end); reuses `buckets` (`ood_rate`) of the same window."""
        in_window = and_(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end)
        with self._reading() as connection:
            if buckets is None:
                scored, flagged = connection.execute(
                    select(func.count(), flagged_count()).where(in_window)
                ).one()
            else:
                scored, flagged = sum(b.total for b in buckets), sum(b.flagged for b in buckets)
            # A sample counts while its current label is a verdict: an undone first label leaves it unlabelled.
            current = current_labels(in_window)
            labelled = connection.execute(
                select(func.count()).select_from(current).where(current.c.label.is_not(None))).scalar_one()
        return WindowCounts(scored=int(scored), flagged=int(flagged or 0), labelled=int(labelled))

    def score_histogram(self, model_id: int, indicator: str, start: datetime, end: datetime, bins: int = 40,
                        include: Sequence[float] = (), predicted_class: int | None = None) -> Histogram:
        """Counts of `indicator` in `bins` equal-width bins over [start, end), computed in SQL; only
        the samples predicted as `predicted_class` when it is given.

        The range covers the data and the values in `include` (the thresholds drawn on it).
        """
        column = indicator_column(indicator)
        in_window = and_(
            Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end, column.is_not(None),
            *([Sample.predicted_class == predicted_class] if predicted_class is not None else []),
        )
        with self._reading() as connection:
            low, high, total = connection.execute(
                select(func.min(column), func.max(column), func.count(column)).where(in_window)).one()
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

    def percentiles_in_window(self, model_id: int, values: dict[str, float | None], start: datetime,
                              end: datetime) -> dict[str, float | None]:
        """For each indicator value: the percentage of the window's samples at or below it (one query)."""
        present = {name: value for name, value in values.items() if value is not None}
        if not present:
            return {name: None for name in values}
        columns = []
        for name, value in present.items():
            column = indicator_column(name)
            columns.append(func.sum(case((column <= value, 1), else_=0)))
            columns.append(func.count(column))
        with self._reading() as connection:
            row = connection.execute(
                select(*columns).where(Sample.model_id == model_id, Sample.scored_at >= start, Sample.scored_at < end)
            ).one()
        result: dict[str, float | None] = {name: None for name in values}
        for index, name in enumerate(present):
            at_or_below, count = row[2 * index], row[2 * index + 1]
            result[name] = 100.0 * float(at_or_below or 0) / count if count else None
        return result
