"""Batch writes of scored samples on PostgreSQL: COPY into a staging table, then one INSERT.

A batch goes to the server as one binary ``COPY`` into a temporary staging table (one per
database session, emptied at every commit), then one statement moves it into ``samples``::

    INSERT INTO samples (...) SELECT ... FROM staging ORDER BY ordinal
    ON CONFLICT (source position) DO NOTHING RETURNING id, source position

so the batch costs three round trips whatever its size, instead of one statement per row.
The contract is that of the row-by-row insert it replaces: rows are inserted in batch order
(ids grow with it); a source position already stored, or seen earlier in the same batch, is
skipped, not duplicated; the ids of the rows added come back keyed by source position.
"""

from __future__ import annotations

from typing import Any, Sequence

from monitor.store.models import Sample
from monitor.store.records import SourcePosition

SAMPLE_COLUMNS: tuple[str, ...] = tuple(column.name for column in Sample.__table__.c if column.name != "id")
"""The columns a write fills, in the order of the value tuples it is given (``id`` is the database's)."""

SOURCE_KEY = "source_topic, source_partition, source_offset"

_STAGING = "monitor_samples_staging"

# The binary COPY needs each column's type: PostgreSQL's name of the type `samples` declares.
_COPY_TYPES_BY_DDL = {"BIGINT": "int8", "INTEGER": "int4", "VARCHAR": "varchar", "TIMESTAMP WITH TIME ZONE": "timestamptz",
                      "FLOAT": "float8", "BOOLEAN": "bool"}


def _column_types() -> list[str]:
    from sqlalchemy.dialects import postgresql

    types = ["int4"]  # the ordinal
    for name in SAMPLE_COLUMNS:
        ddl = Sample.__table__.c[name].type.compile(dialect=postgresql.dialect())
        copy_type = _COPY_TYPES_BY_DDL.get(ddl.split("(")[0])
        if copy_type is None:  # pragma: no cover - guards a schema edit
            raise RuntimeError(f"samples.{name}: no binary COPY type for {ddl}")
        types.append(copy_type)
    return types


_COPY_TYPES = _column_types()

# Column types come from `samples` itself (WITH NO DATA), so a value the table would refuse
# (a key over its length) is refused by the COPY in the same way.
_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "
    f"SELECT 0 AS ordinal, {', '.join(SAMPLE_COLUMNS)} FROM samples WITH NO DATA"
)
_COPY = f"COPY {_STAGING} (ordinal, {', '.join(SAMPLE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_MOVE = (
    f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)}) "
    f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM {_STAGING} ORDER BY ordinal "
    f"ON CONFLICT ({SOURCE_KEY}) DO NOTHING RETURNING id, {SOURCE_KEY}"
)


def copy_samples(dbapi_connection: Any, rows: Sequence[tuple]) -> dict[SourcePosition, int]:
    """Insert `rows` (value tuples in SAMPLE_COLUMNS order, in the transaction open on the psycopg
    connection); returns the ids of the rows added, keyed by source position."""
    inserted: dict[SourcePosition, int] = {}
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_CREATE_STAGING)
        with cursor.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            for ordinal, row in enumerate(rows):
                copy.write_row((ordinal, *row))
        cursor.execute(_MOVE)
        for sample_id, topic, partition, offset in cursor.fetchall():
            inserted[SourcePosition(topic, partition, offset)] = sample_id
    finally:
        cursor.close()
    return inserted
