"""Connecting to the store by URL: SQLite (default, one process) or PostgreSQL (deployments)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from monitor.errors import ConfigError, MonitorError

DEFAULT_URL = "sqlite:///var/ood-monitor.db"
URL_ENVIRONMENT_VARIABLE = "MONITOR_STORE__URL"
SQLITE_BUSY_TIMEOUT_MS = 10_000


class StoreError(MonitorError):
    """A write was refused (by the database, or by a rule of the store); nothing of it was stored."""


def resolve_url(url: str | None = None) -> str:
    """The store URL: the one given, else $MONITOR_STORE__URL, else the local SQLite default."""
    return url or os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, fit for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def parse_url(url: str) -> URL:
    """Validate a store URL; postgresql:// without a driver means psycopg (version 3)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as error:
        raise ConfigError(
            f"store.url: {url!r} is not a database URL; expected sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE"
        ) from error
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise ConfigError(f"store.url: driver {parsed.drivername!r} is not installed; use postgresql+psycopg://")
        parsed = parsed.set(drivername="postgresql+psycopg")
        if not parsed.database:
            raise ConfigError(f"store.url: {safe_url(parsed)} names no database (…/DATABASE at the end)")
    elif backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ConfigError(f"store.url: driver {parsed.drivername!r} is not supported; use sqlite:///PATH")
    else:
        raise ConfigError(
            f"store.url: backend {backend!r} is not supported; use sqlite:///PATH or postgresql+psycopg://..."
        )
    return parsed


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers (web UI) run beside the writer; foreign keys make deletes cascade.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


WRITE_OPTION = "monitor_write"
"""Execution option of a connection that will write: on SQLite it takes the write lock at BEGIN."""


def _sqlite_begin(connection) -> None:
    # Taking the write lock up front avoids SQLITE_BUSY when a reading transaction later writes.
    immediate = connection.get_execution_options().get(WRITE_OPTION)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


DEFAULT_CONNECT_TIMEOUT_S = 10


def connect(url: str | None = None, *, check: bool = True, echo: bool = False,
            connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S) -> Engine:
    """A pooled engine for the store URL; with `check`, fails early and clearly when unreachable.
    A PostgreSQL connection that takes longer than `connect_timeout_s` fails (libpq counts >= 2 s)."""
    parsed = parse_url(resolve_url(url))
    if parsed.drivername.startswith("sqlite"):
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, pool_pre_ping=True, echo=echo)
        # Take over transaction control from pysqlite (SQLAlchemy's documented recipe).
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        options = {"connect_timeout": connect_timeout_s, "application_name": "ood-monitor", **_dead_peer_options()}
        engine = create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            echo=echo,
            # What the URL's query names (?keepalives_idle=5) wins over these defaults.
            connect_args={name: value for name, value in options.items() if name not in parsed.query},
        )
    if check:
        check_connection(engine)
    return engine


def _dead_peer_options() -> dict[str, int]:
    """libpq options that notice a database host gone without a word (a network partition, a
    crashed VM): without them a query or write on that connection waits forever, past any
    shutdown grace. Idle connections are probed after 30 s (then every 10 s, 3 times) and
    data the server never acknowledges fails the connection after 60 s (libpq 12 and newer).
    No statement timeout: the retention and report jobs run long queries on purpose."""
    options = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    try:
        import psycopg

        if psycopg.pq.version() >= 120000:
            options["tcp_user_timeout"] = 60_000
    except Exception:  # noqa: BLE001 - the driver's absence is reported when connecting
        pass
    return options


def _sqlite_connect(dbapi_connection, record) -> None:
    dbapi_connection.isolation_level = None  # pysqlite must not emit its own BEGIN
    _sqlite_pragmas(dbapi_connection, record)


def check_connection(engine: Engine) -> None:
    """Open and close one connection; a failure becomes a MonitorError naming host and port."""
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except DBAPIError as error:
        raise MonitorError(describe_connection_error(engine.url, error)) from None
    except NoSuchModuleError as error:  # pragma: no cover - the dependency is pinned
        raise MonitorError(f"store: database driver missing for {safe_url(engine.url)}: {error}") from None


def describe_connection_error(url: URL, error: Exception) -> str:
    """A one-line reason for a failed connection, without the password."""
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    if url.get_backend_name() == "sqlite":
        return f"cannot open the SQLite database {url.database!r}: {reason}"
    return (
        f"cannot reach PostgreSQL at {url.host or 'localhost'}:{url.port or 5432} "
        f"(database {url.database!r}, user {url.username!r}): {reason}"
    )
