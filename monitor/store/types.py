"""Column types shared by the models and the migrations."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zones: values are stored as naive UTC text (which also sorts
    correctly), and read back as aware UTC datetimes. A naive datetime given to the store
    is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64-bit keys.
BigIntegerKey = BigInteger().with_variant(Integer(), "sqlite")

# JSONB on PostgreSQL (indexable, compact); JSON text elsewhere.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class PayloadDocument(TypeDecorator):
    """A JSON column that holds one typed payload class (monitor.store.payloads): values are
    written with the class's `to_json` and read back with its `from_json`, so a document of
    another shape is refused on the way in and named on the way out.

    empty_as_none: the empty document `{}` stands for None (a threshold that was not fitted
    has no counts), so the column stays NOT NULL. nullable: None is SQL NULL (a column that may
    hold no document); otherwise None is refused like any other non-payload.
    """

    impl = JSON
    cache_ok = True

    def __init__(self, payload: type, *, empty_as_none: bool = False, nullable: bool = False):
        super().__init__()
        self.payload = payload
        self.empty_as_none = empty_as_none
        self.nullable = nullable

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(JSONB(none_as_null=True) if dialect.name == "postgresql"
                                       else JSON(none_as_null=True))

    def process_bind_param(self, value, dialect):
        if value is None and self.empty_as_none:
            return {}
        if value is None and self.nullable:
            return None
        if not isinstance(value, self.payload):
            raise TypeError(f"expected a {self.payload.__name__}, got {type(value).__name__}: {value!r}")
        return value.to_json()

    def process_result_value(self, value, dialect):
        if value is None or (self.empty_as_none and value == {}):
            return None
        return self.payload.from_json(value)
