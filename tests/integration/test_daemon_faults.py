"""Faults with nothing lost and nothing stored twice, on real `ood-monitor run` processes, the real
Apache Kafka 0.9 broker and real databases: SIGKILL and restart, a group member killed, the broker
restarted, PostgreSQL stopped for 20 s."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from monitor.store import connect, upgrade
from tests.integration.daemon_support import (
    DaemonProcess,
    PacedProducer,
    StoredRows,
    committed_offsets,
    daemon_config,
    image_stream,
    produce,
)
from tests.services import OwnPostgres, free_port, postgres_database, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 3
API = (0, 9)


def _topic(kafka09, prefix: str) -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kafka09.create_topic(topic, PARTITIONS)
    return topic


def _config(kafka09, topic, store_url, model_cache, **extra):
    return dict(bootstrap=kafka09.bootstrap, api_version="0.9", topic=topic, group=f"g-{topic}",
                store_url=store_url, cache_dir=model_cache, **extra)


def _ends(positions):
    ends: dict[int, int] = {}
    for partition, offset in positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def _assert_exactly_once(rows: StoredRows, topic: str, produced: list[tuple[int, int]]) -> None:
    stored = rows.positions(topic)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert stored == sorted(produced), f"{len(set(produced) - set(stored))} message(s) lost"


def _wait_committed(kafka09, topic, ends, timeout=60):
    wait_until(lambda: {p: o for p, o in committed_offsets(kafka09.bootstrap, API, f"g-{topic}", topic,
                                                           PARTITIONS).items() if o} == ends,
               timeout, f"offsets {ends} committed")


def test_sigkill_mid_run_then_restart_loses_nothing_and_stores_nothing_twice(kafka09, tmp_path, model_cache):
    topic = _topic(kafka09, "kill")
    store_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    daemon = DaemonProcess.configured(tmp_path, "daemon", **_config(kafka09, topic, store_url, model_cache)).start()
    rows = StoredRows(store_url)
    try:
        daemon.wait_ready()
        # The stream holds its second half until after the kill: the fault, triggered by stored rows,
        # falls mid-stream whatever the machine's speed.
        stream = PacedProducer(kafka09.bootstrap, API, topic, image_stream(160, "kill"), rate=80, hold_after=80).start()
        wait_until(lambda: rows.total() >= 24, 120, "the first batches stored")
        daemon.kill()  # SIGKILL: no chance to finish the batch or commit
        stored_at_kill = rows.total()
        stream.release()
        committed = committed_offsets(kafka09.bootstrap, API, f"g-{topic}", topic, PARTITIONS)
        assert sum(o or 0 for o in committed.values()) <= stored_at_kill  # never committed ahead of the store
        produced = stream.join()

        daemon.start().wait_ready()
        wait_until(lambda: rows.total() >= len(produced), 180, f"all {len(produced)} messages stored")
        _assert_exactly_once(rows, topic, produced)
        _wait_committed(kafka09, topic, _ends(produced))

        daemon.signal(signal.SIGTERM)  # graceful stop: exits 0
        assert daemon.wait_exit(60) == 0
    finally:
        daemon.stop()
        rows.close()


def test_two_daemons_in_a_group_the_survivor_takes_over_the_partitions_of_the_killed_one(
        kafka09, tmp_path, model_cache):
    topic = _topic(kafka09, "group")
    with postgres_database("daemon_group") as store_url:
        engine = connect(store_url)
        upgrade(engine)
        engine.dispose()
        config = _config(kafka09, topic, store_url, model_cache)
        first = DaemonProcess.configured(tmp_path, "first", **config).start()
        second = DaemonProcess.configured(tmp_path, "second", **config).start()
        rows = StoredRows(store_url)
        try:
            first.wait_ready()
            second.wait_ready()  # ready = has partitions: the group split them between the two
            wait_until(lambda: (first.assigned_partitions() or 0) + (second.assigned_partitions() or 0) == PARTITIONS,
                       60, "the group to settle with every partition assigned once")
            stream = PacedProducer(kafka09.bootstrap, API, topic, image_stream(160, "group"), rate=50,
                                   hold_after=80).start()
            wait_until(lambda: rows.total() >= 24, 120, "the first batches stored")
            first.kill()  # triggered by stored rows; the stream's second half waits for it
            produced = stream.join()
            wait_until(lambda: rows.total() >= len(produced), 180,
                       f"the survivor to store all {len(produced)} messages")
            _assert_exactly_once(rows, topic, produced)
            _wait_committed(kafka09, topic, _ends(produced))
            assert second.alive()
        finally:
            first.stop()
            second.stop()
            rows.close()


def test_broker_restart_the_daemon_reconnects_and_resumes(kafka09, tmp_path, model_cache):
    topic = _topic(kafka09, "restart")
    store_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    daemon = DaemonProcess.configured(tmp_path, "daemon", **_config(kafka09, topic, store_url, model_cache)).start()
    rows = StoredRows(store_url)
    try:
        daemon.wait_ready()
        before = produce(kafka09.bootstrap, API, topic, image_stream(40, "before"))
        wait_until(lambda: rows.total() >= len(before), 120, "the messages sent before the restart stored")
        kafka09.restart()  # same port, same data: messages and committed offsets survive
        after = produce(kafka09.bootstrap, API, topic, image_stream(40, "after"))
        wait_until(lambda: rows.total() >= len(before) + len(after), 180, "the messages sent after the restart")
        _assert_exactly_once(rows, topic, before + after)
        _wait_committed(kafka09, topic, _ends(before + after), timeout=90)
        assert daemon.alive()
    finally:
        daemon.stop()
        rows.close()


def test_postgresql_down_for_20_s_the_daemon_backs_off_commits_nothing_and_resumes(kafka09, tmp_path, model_cache):
    topic = _topic(kafka09, "pgdown")
    postgres = OwnPostgres().init().start()
    try:
        store_url = postgres.create_database("monitor")

        # An empty (not migrated) PostgreSQL database: the daemon refuses to start and says what to do.
        refusing = daemon_config(tmp_path / "refusing.toml", port=free_port(),
                                 **_config(kafka09, topic, store_url, model_cache))
        refused = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--config", str(refusing)],
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2
        assert "ood-monitor db upgrade" in refused.stderr

        engine = connect(store_url)
        upgrade(engine)
        engine.dispose()
        daemon = DaemonProcess.configured(tmp_path, "daemon", **_config(kafka09, topic, store_url, model_cache))
        daemon.start()
        rows = StoredRows(store_url)
        try:
            daemon.wait_ready()
            before = produce(kafka09.bootstrap, API, topic, image_stream(40, "before"))
            wait_until(lambda: rows.total() >= len(before), 120, "the messages sent before the outage stored")
            _wait_committed(kafka09, topic, _ends(before))

            postgres.stop()
            outage_ends = time.monotonic() + 20
            during = produce(kafka09.bootstrap, API, topic, image_stream(40, "during"))
            wait_until(lambda: daemon.probe("/readyz") == 503, 60, "the daemon to report failing database writes")
            wait_until(lambda: time.monotonic() >= outage_ends or not daemon.alive(), 30, "the 20 s outage")
            assert daemon.alive(), daemon.log_tail()
            committed = committed_offsets(kafka09.bootstrap, API, f"g-{topic}", topic, PARTITIONS)
            assert {p: o for p, o in committed.items() if o} == _ends(before)  # nothing committed while down
            assert "storing a batch failed" in daemon.log_tail(20000)

            postgres.start()
            wait_until(lambda: rows.total() >= len(before) + len(during), 120, "the messages sent during the outage")
            _assert_exactly_once(rows, topic, before + during)
            _wait_committed(kafka09, topic, _ends(before + during))
            wait_until(lambda: daemon.probe("/readyz") == 200, 30, "the daemon to be ready again")
            # The group kept the partitions through the 20 s (over three times the 6 s session
            # timeout): nothing was replayed.
            assert "partitions revoked" not in daemon.log_tail(200_000)
            metrics = httpx.get(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5).text
            assert "ood_monitor_replayed_messages_total 0.0" in metrics
        finally:
            daemon.stop()
            rows.close()
    finally:
        postgres.remove()
