"""Integration fixtures: real services, started and stopped by the suite."""

from __future__ import annotations

import sys
from typing import Iterator

import pytest


def pytest_collection_modifyitems(config, items):
    """Every test here needs real services: `-m "not integration"` must leave none of them behind."""
    unmarked = [item.nodeid for item in items
                if item.nodeid.startswith("tests/integration/") and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("integration tests without the integration marker: " + ", ".join(unmarked[:5]))


def pytest_terminal_summary(terminalreporter):
    """The container image test's figures (build time, image size, each step) at the end of the run,
    where a CI log shows them (tests/integration/test_deploy_image.py)."""
    figures = getattr(sys.modules.get("tests.integration.test_deploy_image"), "FIGURES", None)
    if figures:
        terminalreporter.write_sep("-", "container image (deploy/Containerfile)")
        terminalreporter.write_line(", ".join(f"{key} {value}" for key, value in figures.items()))


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


# --- brokers and the daemon ------------------------------------------------------------------------
# Real brokers, started once per run: Apache Kafka 0.9 (durable; tests may restart it) and Tansu
# (in memory). Tests use their own topics and consumer groups, so they share the brokers safely.


@pytest.fixture(scope="session")
def kafka09(tmp_path_factory):
    from tests.services import Kafka09Broker

    broker = Kafka09Broker(tmp_path_factory.mktemp("kafka09")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tansu(tmp_path_factory):
    from tests.services import SessionTansu

    broker = SessionTansu(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture(params=["kafka-0.9", "tansu"])
def broker(request):
    """Each real broker in turn: Apache Kafka 0.9 (no headers, pinned api_version) and Tansu."""
    chosen = request.getfixturevalue("kafka09" if request.param == "kafka-0.9" else "tansu")
    chosen.ensure_running()
    return chosen


def create_topic(broker, name: str, partitions: int) -> None:
    from tests.services import Kafka09Broker, create_tansu_topic

    if isinstance(broker, Kafka09Broker):
        broker.create_topic(name, partitions)
    else:
        create_tansu_topic(broker, name, partitions)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One 1C-Sum calibration cache for every daemon of the run (the first one fills it)."""
    return tmp_path_factory.mktemp("model-cache")
