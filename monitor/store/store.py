"""The queries the rest of the service needs, behind one `Store` object.

Writes take plain records (monitor.store.records) and run one transaction per call;
reads return frozen dataclasses or numpy arrays. SQL lives here and nowhere else.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    insert,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError

from monitor.clock import utc_now
from monitor.errors import MonitorError
from monitor.thresholds import ClassThresholds
from monitor.store.bulk import SAMPLE_COLUMNS as _SAMPLE_INSERT_COLUMNS
from monitor.store.bulk import SOURCE_KEY as _SOURCE_KEY
from monitor.store.bulk import copy_samples
from monitor.store.engine import (
    DEFAULT_CONNECT_TIMEOUT_S,
    WRITE_OPTION,
    StoreError,
    check_connection,
    connect,
    safe_url,
)
from monitor.store.models import (
    INDICATOR_COLUMNS,
    Alert,
    JobRun,
    Reject,
    Sample,
    SampleImage,
    Threshold,
)
from monitor.store.alerts import AlertsAggregate
from monitor.store.labels import LabelsAggregate
from monitor.store.policy import PolicyAggregate
from monitor.store.proposals import ProposalsAggregate
from monitor.store.registry import RegistryAggregate
from monitor.store.reports import ReportsAggregate
from monitor.store.runs import RunsAggregate
from monitor.store.samples import SamplesAggregate
from monitor.store.windows import WindowsAggregate
from monitor.store.records import (
    PurgeResult,
    RejectRecord,
    RetentionPolicy,
    ScoredSample,
    SourcePosition,
    StoredJudgement,
    WriteResult,
)

log = logging.getLogger(__name__)

def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


_TIME_COLUMNS = ("produced_at", "received_at", "scored_at")


def _sqlite_time(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DATETIME stores: naive UTC with microseconds (sorts as time)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _aware_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


@lru_cache(maxsize=None)
def _sample_insert(marker: str) -> str:
    """INSERT of one samples row that skips a source position already stored."""
    values = ", ".join([marker] * len(_SAMPLE_INSERT_COLUMNS))
    return (
        f"INSERT INTO samples ({', '.join(_SAMPLE_INSERT_COLUMNS)}) VALUES ({values}) "
        f"ON CONFLICT ({_SOURCE_KEY}) DO NOTHING"
    )


class Store(SamplesAggregate, LabelsAggregate, PolicyAggregate, ProposalsAggregate, RegistryAggregate, WindowsAggregate,
            AlertsAggregate, ReportsAggregate, RunsAggregate):
    """The service's database. Build it with `Store.open(url)` (or around an existing engine).

    Samples and their window aggregates (monitor.store.samples), labels (monitor.store.labels),
    the policy of thresholds and 1C-Sum weights (monitor.store.policy), models and calibrations
    (monitor.store.registry), proposals (monitor.store.proposals), the jobs' sample windows (monitor.store.windows), alerts
    (monitor.store.alerts), reports (monitor.store.reports) and job runs (monitor.store.runs) are
    aggregates of their own, mixed in here."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._pinned: ContextVar[Connection | None] = ContextVar(f"store-reads-{id(self)}", default=None)

    @classmethod
    def open(
        cls, url: str | None = None, *, require_current_schema: bool = True, upgrade_sqlite: bool = False,
        connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> "Store":
        """Connect (failing clearly when unreachable) and, by default, refuse an out-of-date schema.

        upgrade_sqlite: first bring an embedded SQLite database up to date (`[store]
        auto_upgrade_sqlite`); PostgreSQL is only ever upgraded by `ood-monitor db upgrade`.
        connect_timeout_s: `[store] connect_timeout_s`, for this and every later connection.
        """
        engine = connect(url, connect_timeout_s=connect_timeout_s)
        from monitor.store.migrate import current_revision, ensure_schema_current, head_revision, upgrade

        try:
            if upgrade_sqlite and engine.dialect.name == "sqlite":
                before = current_revision(engine)
                if before != head_revision():
                    upgrade(engine)
                    log.info("embedded SQLite database %s upgraded from %s to %s", safe_url(engine.url),
                             before or "empty", head_revision())
            if require_current_schema:
                ensure_schema_current(engine)
        except MonitorError:
            engine.dispose()
            raise
        return cls(engine)

    def check_connection(self) -> None:
        """Open and close one connection (the readiness probes); MonitorError naming host and port,
        never the password, when the database does not answer."""
        check_connection(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({safe_url(self.engine.url)!r})"

    # --- transactions ----------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One write transaction; a database refusal becomes StoreError after the rollback."""
        dbapi = self.engine.dialect.loaded_dbapi
        refusals = (IntegrityError, DataError, dbapi.IntegrityError, dbapi.DataError)
        try:
            with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as connection:
                with connection.begin():
                    yield connection
        except refusals as error:
            reason = getattr(error, "orig", None) or error
            raise StoreError(f"the database refused the write, nothing was stored: {reason}") from error

    @contextmanager
    def reads(self) -> Iterator[None]:
        """Group the reads made inside (on this thread or task) on one connection: one pool
        checkout instead of one per read, for a page that reads several things. Reads only:
        on SQLite the group sees one snapshot, so a write made inside is not seen by later reads."""
        if self._pinned.get() is not None:
            yield
            return
        with self.engine.connect() as connection:
            token = self._pinned.set(connection)
            try:
                yield
            finally:
                self._pinned.reset(token)

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        pinned = self._pinned.get()
        if pinned is not None:
            yield pinned
            return
        with self.engine.connect() as connection:
            yield connection

    def _insert(self, table):
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # --- the write path --------------------------------------------------------------------

    @staticmethod
    def _sample_row(sample: ScoredSample) -> dict[str, Any]:
        """The column values of a scored sample (times as given; the insert converts them)."""
        row: dict[str, Any] = {
            "model_id": sample.model_id,
            "source_topic": sample.topic,
            "source_partition": sample.partition,
            "source_offset": sample.offset,
            "sample_key": sample.sample_key,
            "produced_at": sample.produced_at,
            "received_at": sample.received_at,
            "scored_at": sample.scored_at,
            "predicted_class": int(sample.predicted_class),
            "score": _finite_or_none(sample.score),
            "score_indicator": sample.score_indicator,
            "flagged": bool(sample.flagged),
            "threshold_id": sample.threshold_id,
        }
        scores = sample.scores
        for name, column in INDICATOR_COLUMNS.items():
            row[column.name] = _finite_or_none(scores.get(name))
        return row

    def _insert_samples(self, connection: Connection, samples: Sequence[ScoredSample]) -> dict[SourcePosition, int]:
        """INSERT ... ON CONFLICT DO NOTHING one batch; returns the ids of the rows it added.

        Values are built in the database's form and handed to the driver: SQLAlchemy's generic
        multi-row insert converts each value through its type objects, several times slower on
        this hot path (see the benchmark). SQLite takes the driver's executemany; PostgreSQL a
        COPY into a staging table and one INSERT ... SELECT (monitor.store.bulk).
        """
        sqlite_form = self.dialect == "sqlite"
        time_form = _sqlite_time if sqlite_form else _aware_utc
        rows = []
        for sample in samples:
            row = self._sample_row(sample)
            for name in _TIME_COLUMNS:
                row[name] = time_form(row[name])
            if sqlite_form:
                row["flagged"] = int(row["flagged"])
            rows.append(tuple(row[name] for name in _SAMPLE_INSERT_COLUMNS))
        inserted: dict[SourcePosition, int] = {}
        if sqlite_form:
            # The write transaction holds SQLite's write lock (BEGIN IMMEDIATE) and rowids only grow
            # (max + 1), so this batch's rows are exactly those above the maximum taken first.
            before = connection.exec_driver_sql("SELECT coalesce(max(id), 0) FROM samples").scalar_one()
            connection.exec_driver_sql(_sample_insert("?"), rows)
            found = connection.exec_driver_sql(f"SELECT id, {_SOURCE_KEY} FROM samples WHERE id > ?", (before,))
            for sample_id, topic, partition, offset in found:
                inserted[SourcePosition(topic, partition, offset)] = sample_id
        else:
            inserted = copy_samples(connection.connection, rows)  # COPY + one INSERT (monitor.store.bulk)
        return inserted

    def write(self, samples: Sequence[ScoredSample] = (), rejects: Sequence[RejectRecord] = ()) -> WriteResult:
        """Store one batch in one transaction; replayed source positions are skipped, not duplicated.

        Either everything new in the batch is stored or (on any error) nothing is.
        """
        reject_rows = [
            {
                "source_topic": reject.topic,
                "source_partition": reject.partition,
                "source_offset": reject.offset,
                "sample_key": reject.sample_key,
                "reason": reject.reason,
                "detail": reject.detail,
                "size": reject.size,
                "received_at": reject.received_at,
            }
            for reject in rejects
        ]
        sample_ids: dict[SourcePosition, int] = {}
        replayed: dict[SourcePosition, StoredJudgement] = {}
        images_inserted = rejects_inserted = 0
        with self._writing() as connection:
            if samples:
                sample_ids = self._insert_samples(connection, samples)
                if len(sample_ids) < len(samples):  # a replay: only after a crash or a rebalance
                    replayed = self._stored_judgements(
                        connection, [sample.position for sample in samples if sample.position not in sample_ids])
                now = utc_now()
                kept: dict[SourcePosition, ScoredSample] = {}  # the row stored for a position: its first
                for sample in samples:
                    if sample.position in sample_ids:
                        kept.setdefault(sample.position, sample)
                image_rows = [
                    {
                        "sample_id": sample_ids[sample.position],
                        "content_type": sample.image.content_type,
                        "data": bytes(sample.image.data),
                        "width": sample.image.width,
                        "height": sample.image.height,
                        "stored_at": now,
                    }
                    for sample in kept.values()
                    if sample.image is not None
                ]
                if image_rows:
                    connection.execute(insert(SampleImage), image_rows)
                    images_inserted = len(image_rows)
            if reject_rows:
                statement = (
                    self._insert(Reject)
                    .on_conflict_do_nothing(index_elements=["source_topic", "source_partition", "source_offset"])
                    .returning(Reject.id)
                )
                rejects_inserted = len(connection.execute(statement, reject_rows).all())
        return WriteResult(
            samples_inserted=len(sample_ids),
            samples_duplicate=len(samples) - len(sample_ids),
            images_inserted=images_inserted,
            rejects_inserted=rejects_inserted,
            rejects_duplicate=len(reject_rows) - rejects_inserted,
            sample_ids=sample_ids,
            replayed=replayed,
        )

    def _stored_judgements(
        self, connection: Connection, positions: Sequence[SourcePosition]
    ) -> dict[SourcePosition, StoredJudgement]:
        position = tuple_(Sample.source_topic, Sample.source_partition, Sample.source_offset)
        rows = connection.execute(
            select(Sample.id, Sample.source_topic, Sample.source_partition, Sample.source_offset, Sample.flagged,
                   Sample.score, Sample.score_indicator, Sample.predicted_class, Threshold.value,
                   Threshold.class_thresholds, Sample.threshold_id)
            .outerjoin(Threshold, Threshold.id == Sample.threshold_id)
            .where(position.in_([tuple(item) for item in positions]))
        )
        return {
            SourcePosition(topic, partition, offset): StoredJudgement(
                sample_id=sample_id, flagged=bool(flagged), score=score, indicator=indicator,
                # The threshold that judged the row: its predicted class's own where the policy has one.
                threshold=(ClassThresholds(threshold, own.per_class()).threshold_of(predicted)
                           if own is not None and threshold is not None else threshold),
                threshold_id=threshold_id)
            for sample_id, topic, partition, offset, flagged, score, indicator, predicted, threshold, own, threshold_id
            in rows
        }

    # --- retention -------------------------------------------------------------------------

    def purge(self, policy: RetentionPolicy, *, now: datetime | None = None) -> PurgeResult:
        """Delete what the policy no longer keeps, `policy.chunk_size` rows per transaction.

        Short transactions keep the writer (stream) and readers (web UI) going during a large purge.
        """
        now = now or utc_now()

        def older(seconds: float | None) -> datetime | None:
            return None if seconds is None else now - timedelta(seconds=seconds)

        # An image's age is its sample's: the same clock as sample retention and every window.
        images = self._purge_table(
            SampleImage.sample_id,
            Sample.scored_at,
            older(policy.image_max_age_s),
            policy.image_max_count,
            policy.chunk_size,
            join_on=Sample.id == SampleImage.sample_id,
        )
        samples = self._purge_table(
            Sample.id, Sample.scored_at, older(policy.sample_max_age_s), policy.sample_max_count, policy.chunk_size
        )
        rejects = self._purge_table(Reject.id, Reject.received_at, older(policy.reject_max_age_s), None, policy.chunk_size)
        alerts = self._purge_table(Alert.id, Alert.created_at, older(policy.alert_max_age_s), None, policy.chunk_size)
        job_runs = self._purge_table(JobRun.id, JobRun.started_at, older(policy.job_run_max_age_s), None, policy.chunk_size)
        result = PurgeResult(images=images, samples=samples, rejects=rejects, alerts=alerts, job_runs=job_runs)
        log.info("retention purge: %s", result)
        return result

    def _purge_table(
        self, key, time_column, before: datetime | None, keep_newest: int | None, chunk_size: int, join_on=None
    ) -> int:
        """Delete rows older than `before` and beyond the `keep_newest` newest (by key), in chunks."""
        if before is None and keep_newest is None:
            return 0
        conditions = []
        with self._reading() as connection:
            if keep_newest is not None:
                boundary = connection.execute(
                    select(key).order_by(key.desc()).offset(keep_newest).limit(1)
                ).scalar_one_or_none()
                if boundary is not None:
                    conditions.append(key <= boundary)
        if before is not None:
            conditions.append(time_column < before)
        if not conditions:
            return 0
        deleted = 0
        while True:
            with self._writing() as connection:
                candidates = select(key).select_from(key.table)
                if join_on is not None:
                    candidates = candidates.join(time_column.table, join_on)
                chunk = connection.execute(
                    candidates.where(or_(*conditions)).order_by(key).limit(chunk_size)
                ).scalars().all()
                if not chunk:
                    return deleted
                connection.execute(delete(key.table).where(key.in_(chunk)))
            deleted += len(chunk)
