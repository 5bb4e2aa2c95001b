"""Integration fixtures: real services, started and stopped by the suite."""

from __future__ import annotations

from typing import Iterator

import pytest


# --- store -----------------------------------------------------------------------------------------
# One database per backend per test run, migrated once; each test gets it emptied.

STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def store_engines(tmp_path_factory) -> Iterator[dict]:
    """Lazily created, migrated engines keyed by backend; databases dropped at the end of the run."""
    from contextlib import ExitStack

    from monitor.store import connect, upgrade
    from tests.services import postgres_database

    engines: dict = {}
    with ExitStack() as cleanup:

        def engine_for(backend: str):
            if backend not in engines:
                if backend == "sqlite":
                    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'monitor.db'}"
                else:
                    url = cleanup.enter_context(postgres_database("store"))
                engine = connect(url)
                cleanup.callback(engine.dispose)
                upgrade(engine)
                engines[backend] = engine
            return engines[backend]

        yield engine_for


def empty_all_tables(engine) -> None:
    from monitor.store.models import Base

    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            names = ", ".join(table.name for table in Base.metadata.sorted_tables)
            connection.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        else:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())


@pytest.fixture(params=STORE_BACKENDS)
def store(request, store_engines):
    """A migrated, empty `monitor.store.Store` on SQLite and on the real PostgreSQL."""
    from monitor.store import Store

    engine = store_engines(request.param)
    empty_all_tables(engine)
    return Store(engine)
