"""Opening the store for a role, and preparing it once before any worker starts.

PostgreSQL is only ever migrated by `ood-monitor db upgrade`. The embedded SQLite file (`[store]
auto_upgrade_sqlite`) is brought up to date by the first process that opens it; processes that
open a fresh file at the same moment take turns through a lock file beside it, so that exactly one
of them creates the schema and the others find it done (without the lock both create it, and one
fails with "table alembic_version already exists").
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

UPGRADE_LOCK_SUFFIX = ".upgrade-lock"


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL; None for PostgreSQL and in-memory databases."""
    from monitor.store.engine import parse_url, resolve_url

    parsed = parse_url(resolve_url(url))
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


@contextlib.contextmanager
def upgrade_lock(url: str) -> Iterator[None]:
    """Held while a process upgrades an SQLite file: one process at a time (released by the kernel
    when the process dies, so a killed upgrader never blocks the next one)."""
    path = sqlite_file(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(f"{path}{UPGRADE_LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def open_store(settings: Any, *, upgrade: bool | None = None):
    """A Store on `[store] url` whose schema is exactly the code's. With `upgrade` (default: `[store]
    auto_upgrade_sqlite`), an SQLite file is first brought up to date, one process at a time."""
    from monitor.store import Store

    store_settings = settings.store
    upgrade = store_settings.auto_upgrade_sqlite if upgrade is None else upgrade
    with upgrade_lock(store_settings.url) if upgrade else contextlib.nullcontext():
        return Store.open(store_settings.url, upgrade_sqlite=upgrade, connect_timeout_s=store_settings.connect_timeout_s)


def prepare_store(settings: Any) -> None:
    """What a supervisor does once before it starts workers: upgrade an SQLite file when allowed,
    and check that the schema is current (else a MonitorError saying to run `ood-monitor db upgrade`)."""
    open_store(settings).close()
