"""Faults with nothing lost and nothing stored twice, on real `ood-monitor run` processes, the real
brokers and real databases: SIGKILL at random points of a run and restart (Apache Kafka 0.9 and
Tansu), a group member killed, the broker restarted, PostgreSQL stopped for 20 s (Kafka 0.9)."""

from __future__ import annotations

import os
import random
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
from tests.integration.conftest import create_topic
from tests.services import Kafka09Broker, OwnPostgres, free_port, postgres_database, wait_until

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


KILLS = 3
RUN_MESSAGES = 2000
SEED_VARIABLE = "MONITOR_TEST_FAULT_SEED"


def _fault_plan(seed: int) -> list[tuple[str, int]]:
    """KILLS faults at random points of the run: (what triggers it, the count it waits for).

    'stored': that many messages have a row; 'committed': the group has committed that many offsets.
    Between 5 % and 80 % of the run, one point in each of KILLS equal spans, in the last three quarters
    of its span: each falls mid-stream, and far enough past the one before (which a kill overshoots
    by the batches in flight) that the restarted daemon makes progress before it is killed again."""
    rng = random.Random(seed)
    low, span = RUN_MESSAGES // 20, (RUN_MESSAGES * 8 // 10 - RUN_MESSAGES // 20) // KILLS
    points = [rng.randrange(low + index * span + span // 4, low + (index + 1) * span) for index in range(KILLS)]
    return [(rng.choice(("stored", "committed")), point) for point in points]


def _committed_prefixes_stored(committed: dict[int, int | None], stored: set[tuple[int, int]]) -> list[str]:
    """Offsets committed ahead of the store: a committed offset o says every offset below o has its row."""
    return [f"partition {partition}: committed {offset}, offset {position} not stored"
            for partition, offset in committed.items() if offset
            for position in range(offset) if (partition, position) not in stored][:5]


def test_sigkill_at_random_points_of_a_run_then_sigterm_stores_and_commits_each_message_once(
        broker, tmp_path, model_cache):
    """SIGKILL three times during one run of a few thousand messages, each at a random point of its
    progress (rows stored or offsets committed, never elapsed time), a restart after each, then SIGTERM:
    every (topic, partition, offset) has exactly one row, and every offset is committed. The seed is
    printed; MONITOR_TEST_FAULT_SEED=<seed> replays a failing run's fault points."""
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2 ** 32))
    plan = _fault_plan(seed)
    print(f"fault seed {seed} ({SEED_VARIABLE}={seed} replays it): SIGKILL when {plan}")
    api = API if isinstance(broker, Kafka09Broker) else None
    topic = f"kills-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, PARTITIONS)
    group = f"g-{topic}"
    produced = produce(broker.bootstrap, api, topic, image_stream(RUN_MESSAGES, "kills"))
    store_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    daemon = DaemonProcess.configured(
        tmp_path, "daemon", bootstrap=broker.bootstrap, api_version=broker.api_version, topic=topic, group=group,
        store_url=store_url, cache_dir=model_cache, batch_size=32).start()
    rows = StoredRows(store_url)

    def committed() -> dict[int, int | None]:
        return committed_offsets(broker.bootstrap, api, group, topic, PARTITIONS)

    try:
        for number, (trigger, point) in enumerate(plan, 1):
            daemon.wait_ready()
            if trigger == "stored":
                wait_until(lambda: rows.total() >= point, 180, f"{point} rows stored before kill {number}")
            else:
                wait_until(lambda: sum(o or 0 for o in committed().values()) >= point, 180,
                           f"{point} offsets committed before kill {number}", interval=0.2)
            daemon.kill()  # SIGKILL: no chance to finish the batch or commit
            stored = set(rows.positions(topic))
            print(f"kill {number}: {len(stored)} messages stored")
            assert len(stored) < RUN_MESSAGES, f"kill {number} came after the run had ended"
            assert not _committed_prefixes_stored(committed(), stored), "an offset was committed before its row"
            daemon.start()

        daemon.wait_ready()
        wait_until(lambda: rows.total() >= RUN_MESSAGES, 240, f"all {RUN_MESSAGES} messages stored")
        _assert_exactly_once(rows, topic, produced)
        ends = _ends(produced)
        wait_until(lambda: {p: o for p, o in committed().items() if o} == ends, 60, f"offsets {ends} committed",
                   interval=0.2)
        daemon.signal(signal.SIGTERM)  # graceful stop: exits 0
        assert daemon.wait_exit(60) == 0, daemon.log_tail()
        _assert_exactly_once(rows, topic, produced)
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
