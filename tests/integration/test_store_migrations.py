"""Alembic owns the schema: up and down on both backends, no drift from the models, clear refusals."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, insert, inspect, select

from monitor.cli import main
from monitor.errors import MonitorError
from monitor.store import Store, ThresholdRecord, connect, ensure_schema_current
from monitor.store.migrate import current_revision, downgrade, head_revision, upgrade
from monitor.store.models import Base, SummaryWeights, Threshold
from monitor.store.payloads import ClassThresholdsDocument, ThresholdParameters
from tests.integration.store_samples import png_blob, scored
from tests.services import POSTGRES_HOST, POSTGRES_PORT, postgres_database, postgres_url
from tests.store_data import job_failed_alert, register_model, summary_weights

pytestmark = pytest.mark.integration  # the store fixtures run on the real PostgreSQL too

TABLES = {table.name for table in Base.metadata.sorted_tables}


@contextmanager
def empty_database(backend: str, tmp_path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        with postgres_database("migrations") as url:
            yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):
    with empty_database(request.param, tmp_path) as url:
        yield url


def user_tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_and_downgrade_an_empty_database(fresh_url):
    engine = connect(fresh_url)
    try:
        assert current_revision(engine) is None and user_tables(engine) == set()
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert user_tables(engine) == TABLES
        downgrade(engine, "base")
        assert current_revision(engine) is None and user_tables(engine) == set()
        upgrade(engine)
        assert user_tables(engine) == TABLES
    finally:
        engine.dispose()


def test_upgrade_keeps_data_and_downgrade_to_base_removes_it(fresh_url):
    engine = connect(fresh_url)
    try:
        upgrade(engine)
        store = Store(engine)
        model = register_model(store, "cnn", "sha256:1")
        threshold = store.add_threshold(ThresholdRecord(model_id=model.id, indicator="MP", method="two-means", value=0.5))
        result = store.write([scored(i, model.id, flagged=True, threshold_id=threshold.id, image=png_blob()) for i in range(5)])
        store.add_label(next(iter(result.sample_ids.values())), "OOD", "alice")
        store.add_alert(job_failed_alert())

        upgrade(engine)  # already at head: nothing changes, nothing is lost
        assert store.count_samples() == 5 and store.active_threshold(model.id, "MP").id == threshold.id

        downgrade(engine, "base")  # the first revision owns every table: going below it removes them
        assert current_revision(engine) is None and user_tables(engine) == set()

        upgrade(engine)
        store = Store(engine)
        assert store.count_samples() == 0 and store.list_models() == []
        model = register_model(store, "cnn", "sha256:1")
        assert store.write([scored(0, model.id)]).samples_inserted == 1
    finally:
        engine.dispose()


def test_upgrading_to_the_policy_link_keeps_each_threshold_with_its_weights(fresh_url):
    """0004 -> 0005 with data: the active threshold keeps the weights the stream applied with it,
    older ones the weights their fit recorded, else the newest stored before them."""
    engine = connect(fresh_url)
    try:
        upgrade(engine, "0004")
        store = Store(engine)
        weighted, plain = register_model(store, "cnn", "sha256:1"), register_model(store, "mlp", "sha256:2")
        day = datetime(2026, 11, 1, tzinfo=timezone.utc)
        weights_table, thresholds_table = SummaryWeights.__table__, Threshold.__table__
        with engine.begin() as connection:  # rows as the writer before revision 0005 stored them
            first, second = (connection.execute(insert(weights_table).returning(weights_table.c.id), [{
                "model_id": weighted.id, "weights": summary_weights({"MP": scale, "ANG": 1.0}),
                "created_at": day + timedelta(days=offset), "active": active}]).scalar_one()
                for scale, offset, active in ((2.0, 0, False), (3.0, 5, True)))

            def threshold(model_id, offset, active, recorded=None):
                return connection.execute(insert(thresholds_table).returning(thresholds_table.c.id), [{
                    "model_id": model_id, "indicator": "1C-Sum", "method": "two-means", "value": 1.0 + offset,
                    "parameters": ThresholdParameters(summary_weights_id=recorded), "counts": None,
                    "active": active, "created_at": day + timedelta(days=offset, hours=1), "fitted_by": "scheduler"}]
                ).scalar_one()

            recorded = threshold(weighted.id, 6, False, recorded=first)  # its fit named the first weights
            between = threshold(weighted.id, 1, False)
            before_any = threshold(weighted.id, -1, False)
            current = threshold(weighted.id, 7, True)
            unweighted = threshold(plain.id, 2, True)

        upgrade(engine)
        assert current_revision(engine) == head_revision()
        links = {row.id: row.summary_weights_id for row in store.threshold_history(weighted.id)}
        assert links == {recorded: first, between: first, before_any: None, current: second}
        policy = store.active_policy(weighted.id, "1C-Sum")
        assert (policy.version, policy.summary_weights_id, dict(policy.weights)) == (current, second, {"MP": 3.0, "ANG": 1.0})
        policy = store.active_policy(plain.id, "1C-Sum")
        assert (policy.version, policy.summary_weights_id, policy.weights) == (unweighted, None, None)

        downgrade(engine, "0004")  # and back: the link goes, the rows stay
        assert "summary_weights_id" not in {column["name"] for column in inspect(engine).get_columns("thresholds")}
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(thresholds_table)).scalar_one() == 5
    finally:
        engine.dispose()


def test_class_thresholds_come_with_0006_and_older_thresholds_judge_every_class_globally(fresh_url):
    """0005 -> 0006: existing thresholds keep their value and get no own class thresholds (the
    global one judges every class); a threshold stored with class thresholds reads them back;
    downgrading drops the column and keeps the rows."""
    engine = connect(fresh_url)
    try:
        upgrade(engine, "0005")
        store = Store(engine)
        model = register_model(store, "cnn", "sha256:1")
        with engine.begin() as connection:  # a row as the writer before revision 0006 stored it
            old = connection.execute(insert(Threshold.__table__).returning(Threshold.__table__.c.id), [{
                "model_id": model.id, "indicator": "1C-Sum", "method": "two-means", "value": 2.5,
                "parameters": ThresholdParameters(), "counts": None, "active": True,
                "created_at": datetime(2026, 11, 1, tzinfo=timezone.utc), "fitted_by": "scheduler"}]).scalar_one()

        upgrade(engine)
        policy = store.active_policy(model.id, "1C-Sum")
        assert (policy.version, policy.threshold, dict(policy.per_class)) == (old, 2.5, {})
        assert store.get_threshold(old).class_thresholds is None
        stored = store.add_threshold(ThresholdRecord(
            model_id=model.id, indicator="1C-Sum", method="two-means", value=3.0, fitted_by="test",
            class_thresholds=ClassThresholdsDocument(thresholds={"4": 1.5}, min_class_samples=100,
                                                     class_counts={"4": 300, "5": 12},
                                                     fallbacks={"5": "12 samples"})))
        assert store.get_threshold(stored.id).class_thresholds.fallbacks == {"5": "12 samples"}
        assert dict(store.active_policy(model.id, "1C-Sum").per_class) == {4: 1.5}

        downgrade(engine, "0005")
        assert "class_thresholds" not in {column["name"] for column in inspect(engine).get_columns("thresholds")}
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(Threshold.__table__)).scalar_one() == 2
    finally:
        engine.dispose()


def test_the_migrations_match_the_models(fresh_url):
    engine = connect(fresh_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_an_out_of_date_schema_is_refused(fresh_url):
    engine = connect(fresh_url)
    try:
        with pytest.raises(MonitorError, match=r"database schema is at nothing .*code expects .*run `ood-monitor db upgrade`"):
            ensure_schema_current(engine)
        with pytest.raises(MonitorError, match="ood-monitor db upgrade"):
            Store.open(fresh_url)
        upgrade(engine)
        ensure_schema_current(engine)
        Store.open(fresh_url).close()
    finally:
        engine.dispose()


def test_upgrade_sqlite_brings_an_embedded_database_up_to_date_and_never_postgresql(fresh_url):
    # What `run`, `scheduler`, `refit`, `report` and `web` do with [store] auto_upgrade_sqlite (on by default).
    if fresh_url.startswith("sqlite"):
        store = Store.open(fresh_url, upgrade_sqlite=True)
        try:
            assert current_revision(store.engine) == head_revision()
        finally:
            store.close()
    else:
        with pytest.raises(MonitorError, match="ood-monitor db upgrade"):
            Store.open(fresh_url, upgrade_sqlite=True)


def test_every_command_upgrades_an_embedded_sqlite_database(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    monkeypatch.setenv("MONITOR_STORE__URL", url)
    monkeypatch.setenv("MONITOR_JOBS__REPORT_DIR", str(tmp_path / "reports"))
    # Nothing to fit on an empty database: the command says so, but it got that far.
    assert main(["refit"]) in (0, 1)
    engine = connect(url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_db_command_upgrades_reports_and_downgrades(fresh_url, capsys, monkeypatch):
    monkeypatch.delenv("MONITOR_STORE__URL", raising=False)
    assert main(["db", "current", "--url", fresh_url]) == 1
    assert "code expects" in capsys.readouterr().out

    assert main(["db", "upgrade", "--url", fresh_url]) == 0
    monkeypatch.setenv("MONITOR_STORE__URL", fresh_url)  # the environment names the database from now on
    assert main(["db", "current"]) == 0
    assert f"{head_revision()} (up to date)" in capsys.readouterr().out

    assert main(["db", "downgrade", "base"]) == 0
    assert main(["db", "current"]) == 1


def test_bad_urls_get_clear_errors(capsys):
    assert main(["db", "upgrade", "--url", "definitely not a url"]) == 2
    assert "is not a database URL" in capsys.readouterr().err
    assert main(["db", "upgrade", "--url", "mysql://user@host/db"]) == 2
    assert "backend 'mysql' is not supported" in capsys.readouterr().err


def test_an_unreachable_server_is_named_without_its_password(capsys):
    closed_port = POSTGRES_PORT + 1 if POSTGRES_PORT < 65535 else 1
    url = f"postgresql+psycopg://monitor:s3cret-pw@{POSTGRES_HOST}:{closed_port}/monitor"

    assert main(["db", "current", "--url", url]) == 2

    err = capsys.readouterr().err
    assert f"cannot reach PostgreSQL at {POSTGRES_HOST}:{closed_port}" in err
    assert "s3cret-pw" not in err
    with pytest.raises(MonitorError, match="cannot reach PostgreSQL") as caught:
        connect(url)
    assert "s3cret-pw" not in str(caught.value)


def test_readiness_asks_the_store_whether_its_database_answers(fresh_url, caplog):
    from monitor.service.scheduler import database_problem

    with Store.open(fresh_url, require_current_schema=False) as store:
        store.check_connection()
        assert database_problem(store) is None
    closed_port = POSTGRES_PORT + 1 if POSTGRES_PORT < 65535 else 1
    gone = Store(create_engine(f"postgresql+psycopg://monitor:s3cret-pw@{POSTGRES_HOST}:{closed_port}/monitor"))
    try:
        with pytest.raises(MonitorError, match=f"cannot reach PostgreSQL at {POSTGRES_HOST}:{closed_port}") as caught:
            gone.check_connection()
        assert "s3cret-pw" not in str(caught.value)
        # /readyz is public: it says only that the database is unreachable; the log says why.
        assert database_problem(gone) == "database unreachable (see the log)"
        assert f"cannot reach PostgreSQL at {POSTGRES_HOST}:{closed_port}" in caplog.text
    finally:
        gone.close()


def test_db_command_takes_the_url_from_the_settings_file(fresh_url, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MONITOR_STORE__URL", raising=False)
    config = tmp_path / "monitor.toml"
    config.write_text(f'[store]\nurl = "{fresh_url}"\n')

    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert main(["db", "current", "--config", str(config)]) == 0
    assert "(up to date)" in capsys.readouterr().out


def test_postgresql_connections_notice_a_vanished_server_and_the_url_can_say_otherwise():
    # A partitioned database host sends nothing back: keepalives and a TCP user timeout make a
    # waiting write fail (and be retried) instead of hanging past the shutdown grace.
    def parameters(url):
        engine = connect(url)
        try:
            with engine.connect() as connection:
                return connection.connection.dbapi_connection.info.get_parameters()
        finally:
            engine.dispose()

    defaults = parameters(postgres_url("test"))
    assert (defaults["keepalives"], defaults["keepalives_idle"], defaults["keepalives_count"]) == ("1", "30", "3")
    assert defaults["tcp_user_timeout"] == "60000"
    assert parameters(postgres_url("test") + "?keepalives_idle=5")["keepalives_idle"] == "5"
