"""One replica at a time per job: a lock the operating system or the database frees on crash.

PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) taken on a connection
opened for this one job run and closed after it. If the process dies, the server sees the
socket close and frees the lock at once, so another replica can take the next run.

SQLite: an exclusive `flock` on a file beside the database (`<db>.job-<name>.lock`); the
kernel frees it when the process dies. SQLite is meant for one host, so that is enough.
An in-memory SQLite database is private to its process: a process-local lock suffices.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, func, select

log = logging.getLogger(__name__)

# Keys of every advisory lock this service takes live in one namespace so they cannot
# collide with another application's advisory locks on a shared database.
LOCK_NAMESPACE = "ood-monitor:job:"

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def advisory_lock_key(job_name: str) -> int:
    """Stable signed 64-bit key for a job name (PostgreSQL advisory keys are bigint)."""
    digest = hashlib.blake2b((LOCK_NAMESPACE + job_name).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def job_lock(engine: Engine, job_name: str) -> Iterator[bool]:
    """Try to take the lock of `job_name` without waiting; yields whether this process holds it.

    The caller runs the job only when it yields True; the lock is released on exit.
    """
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with _postgres_lock(engine, job_name) as held:
            yield held
    elif dialect == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            with _process_lock(job_name) as held:
                yield held
        else:
            with _file_lock(Path(database), job_name) as held:
                yield held
    else:
        raise RuntimeError(f"no job lock for database dialect {dialect!r}; use PostgreSQL or SQLite")


@contextmanager
def _postgres_lock(engine: Engine, job_name: str) -> Iterator[bool]:
    key = advisory_lock_key(job_name)
    connection = engine.connect()
    held = False
    try:
        held = bool(connection.execute(select(func.pg_try_advisory_lock(key))).scalar_one())
        # End the implicit transaction so the session lock is not tied to an open transaction.
        connection.commit()
        yield held
    finally:
        try:
            if held:
                connection.execute(select(func.pg_advisory_unlock(key)))
                connection.commit()
        except Exception:  # noqa: BLE001 - a broken connection: discard it so the server drops the lock
            log.warning("could not release the lock of job %s; discarding its connection", job_name)
            connection.invalidate()
        finally:
            connection.close()


@contextmanager
def _file_lock(database: Path, job_name: str) -> Iterator[bool]:
    safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in job_name)
    lock_path = database.with_name(f"{database.name}.job-{safe_name}.lock")
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        if held:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


@contextmanager
def _process_lock(job_name: str) -> Iterator[bool]:
    with _process_locks_guard:
        lock = _process_locks.setdefault(job_name, threading.Lock())
    held = lock.acquire(blocking=False)
    try:
        yield held
    finally:
        if held:
            lock.release()
