"""Scoring workers under their supervisor, on the real brokers (Apache Kafka 0.9 and Tansu): a worker
killed mid-batch and replaced, the supervisor killed, SIGTERM, a message that crashes a decoder. In
each case nothing is lost, nothing is stored twice, no process is left behind, and no shared memory
or temporary file is left over."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import create_topic
from tests.integration.daemon_support import (
    DaemonProcess,
    PacedProducer,
    StoredRows,
    committed_offsets,
    consume_all,
    image_stream,
    produce,
)
from tests.services import Kafka09Broker, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 4
SHM = Path("/dev/shm")


def _api(broker):
    return (0, 9) if isinstance(broker, Kafka09Broker) else None


def _supervised(broker, tmp_path: Path, name: str, workers: int = 2, **options) -> DaemonProcess:
    topic = options.pop("topic")
    scratch = tmp_path / f"{name}-tmp"
    scratch.mkdir(exist_ok=True)
    return DaemonProcess.configured(
        tmp_path, name, args=("--role", "scoring", "--workers", str(workers)), env={"TMPDIR": str(scratch)},
        bootstrap=broker.bootstrap, api_version=broker.api_version or "auto", topic=topic, group=f"g-{topic}",
        store_url=f"sqlite:///{tmp_path / 'monitor.db'}", **options)


def _shm() -> set[str]:
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def _assert_nothing_left(daemon: DaemonProcess, pids: set[int], shm_before: set[str]) -> None:
    """No child process alive, no temporary file in the daemon's TMPDIR, nothing new in /dev/shm."""
    wait_until(lambda: not any(_alive(pid) for pid in pids), 30, f"the worker processes {sorted(pids)} to end")
    scratch = Path(daemon.env["TMPDIR"])
    assert not list(scratch.iterdir()), f"left in TMPDIR: {list(scratch.iterdir())}"
    def leftovers() -> set[str]:
        # Other programs on the machine (other test runs) create and remove such names all the
        # time; one still mapped by a live process is theirs (ours have all exited), and one a
        # process just left is removed by its owner's cleanup moments later. What stays is a leak.
        new = {name for name in _shm() - shm_before if name.startswith(("psm_", "sem.mp", "pym-", "mp-"))}
        return new - _mapped_shm() if new else new

    try:
        wait_until(lambda: not leftovers(), 15, "/dev/shm to hold nothing the workers made")
    except TimeoutError:
        raise AssertionError(f"left in /dev/shm: {leftovers()}") from None


def _mapped_shm() -> set[str]:
    """Names under /dev/shm that some live process has mapped."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
        mapped.update(line.rsplit("/dev/shm/", 1)[1].split(" ")[0] for line in text.splitlines() if "/dev/shm/" in line)
    return mapped


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _worker_pids(daemon: DaemonProcess) -> set[int]:
    readiness = daemon.readiness() or {}
    return {row["pid"] for row in readiness.get("workers", []) if row["role"] == "scoring"}


def _settled(daemon: DaemonProcess, workers: int) -> set[int]:
    """The worker pids once the group has settled with every worker in it: each holds partitions
    and together they hold all. Started before that, a run sees the rebalance of a worker still
    joining, and a member held up in it past its session can have its commit refused (its new
    owner replays those messages: correct, but not what a test of one event measures)."""
    def settled():
        rows = [row for row in (daemon.readiness() or {}).get("workers", []) if row["role"] == "scoring"]
        counts = [row.get("assigned_partitions", 0) for row in rows]
        return len(rows) == workers and all(counts) and sum(counts) == PARTITIONS and {row["pid"] for row in rows}

    return wait_until(settled, 120, f"{workers} workers sharing the {PARTITIONS} partitions")


def _messages_counted(daemon: DaemonProcess) -> float:
    return daemon.metric("ood_monitor_messages_total") or 0.0


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*") if Path(f"/proc/{parent}/task").exists() else []:
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _assert_exactly_once(rows: StoredRows, topic: str, produced) -> None:
    stored = rows.positions(topic)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert stored == sorted(produced), f"{len(set(produced) - set(stored))} message(s) lost"


def _ends(positions) -> dict[int, int]:
    ends: dict[int, int] = {}
    for partition, offset in positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def _committed(broker, topic) -> dict[int, int]:
    return {p: o for p, o in committed_offsets(broker.bootstrap, _api(broker), f"g-{topic}", topic,
                                               PARTITIONS).items() if o}


def _new_topic(broker, prefix: str) -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, PARTITIONS)
    return topic


def test_a_worker_killed_mid_batch_is_replaced_and_its_messages_replayed_once(broker, tmp_path, model_cache):
    topic = _new_topic(broker, "wkill")
    shm_before = _shm()
    daemon = _supervised(broker, tmp_path, "wkill", topic=topic, cache_dir=model_cache).start()
    rows = StoredRows(f"sqlite:///{tmp_path / 'monitor.db'}")
    pids: set[int] = set()
    try:
        daemon.wait_ready(240)
        first = _settled(daemon, 2)
        stream = PacedProducer(broker.bootstrap, _api(broker), topic, image_stream(200, "wkill"), rate=100,
                               hold_after=100).start()
        wait_until(lambda: rows.total() >= 24, 120, "the first batches stored")
        counted = wait_until(lambda: _messages_counted(daemon) >= 24 and _messages_counted(daemon), 30,
                             "the workers' reports of what they stored")
        victim = min(first)
        os.kill(victim, signal.SIGKILL)  # no chance to finish its batch or commit
        wait_until(lambda: not _alive(victim), 30, "the worker to die")
        stored_at_kill = rows.total()
        stream.release()
        produced = stream.join()
        wait_until(lambda: rows.total() >= len(produced), 180, f"{len(produced)} rows stored")
        _assert_exactly_once(rows, topic, produced)
        wait_until(lambda: _committed(broker, topic) == _ends(produced), 60, "every offset committed")
        assert daemon.metric('ood_monitor_worker_restarts_total{role="scoring"}') == 1
        replaced = wait_until(lambda: len(_worker_pids(daemon)) == 2 and _worker_pids(daemon), 60, "a replacement")
        assert victim not in replaced and daemon.alive()
        # The sum over the workers keeps what the dead one had reported (a counter never goes back),
        # and adds everything stored after it died. Its counts since its last report died with it.
        wait_until(lambda: _messages_counted(daemon) >= counted + len(produced) - stored_at_kill, 30,
                   "the messages counted over both workers, the dead one's included")
        pids = first | replaced
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(90) == 0
        _assert_nothing_left(daemon, pids, shm_before)
    finally:
        daemon.kill()
        rows.close()


def test_a_killed_supervisor_leaves_no_worker_and_a_restart_replays(broker, tmp_path, model_cache):
    topic = _new_topic(broker, "skill")
    shm_before = _shm()
    daemon = _supervised(broker, tmp_path, "skill", topic=topic, cache_dir=model_cache).start()
    rows = StoredRows(f"sqlite:///{tmp_path / 'monitor.db'}")
    try:
        daemon.wait_ready(240)
        _settled(daemon, 2)
        family = _descendants(daemon.process.pid)  # the workers and anything they started
        stream = PacedProducer(broker.bootstrap, _api(broker), topic, image_stream(160, "skill"), rate=80,
                               hold_after=80).start()
        wait_until(lambda: rows.total() >= 16, 120, "the first batches stored")
        daemon.kill()  # SIGKILL: the supervisor cannot forward anything
        wait_until(lambda: not any(_alive(pid) for pid in family), 30, "every child to die with the supervisor")
        stored_at_kill = rows.total()
        assert sum(_committed(broker, topic).values()) <= stored_at_kill  # never committed ahead of the store
        stream.release()
        produced = stream.join()
        daemon.start()  # the same command again: what was not committed is consumed again
        wait_until(lambda: rows.total() >= len(produced), 240, f"{len(produced)} rows stored")
        _assert_exactly_once(rows, topic, produced)
        pids = _worker_pids(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(90) == 0
        _assert_nothing_left(daemon, family | pids, shm_before)
    finally:
        daemon.kill()
        rows.close()


def test_sigterm_commits_everything_the_workers_stored(broker, tmp_path, model_cache):
    topic = _new_topic(broker, "term")
    shm_before = _shm()
    daemon = _supervised(broker, tmp_path, "term", topic=topic, cache_dir=model_cache).start()
    rows = StoredRows(f"sqlite:///{tmp_path / 'monitor.db'}")
    try:
        daemon.wait_ready(240)
        pids = _settled(daemon, 2)
        stream = PacedProducer(broker.bootstrap, _api(broker), topic, image_stream(400, "term"), rate=100).start()
        wait_until(lambda: rows.total() >= 40, 120, "batches stored")
        daemon.signal(signal.SIGTERM)  # mid-stream: the batches in flight are finished, then committed
        assert daemon.wait_exit(90) == 0
        stored = rows.positions(topic)
        assert len(stored) == len(set(stored))
        assert _committed(broker, topic) == _ends(stored), "a stored batch was left uncommitted"
        stream.join()
        _assert_nothing_left(daemon, pids, shm_before)
    finally:
        daemon.kill()
        rows.close()


def test_a_message_that_crashes_the_decoder_is_rejected_not_a_restart_loop(broker, tmp_path, model_cache):
    topic = _new_topic(broker, "poison")
    create_topic(broker, f"{topic}.dead-letter", 1)
    shm_before = _shm()
    daemon = _supervised(broker, tmp_path, "poison", topic=topic, cache_dir=model_cache,
                         command=("tests/integration/crashing_decoder.py",)).start()
    rows = StoredRows(f"sqlite:///{tmp_path / 'monitor.db'}")
    try:
        daemon.wait_ready(240)
        messages = image_stream(40, "before") + [("poison", b"CRASH" + bytes(64))] + image_stream(40, "after")
        produced = produce(broker.bootstrap, _api(broker), topic, messages)
        wait_until(lambda: rows.total() >= len(produced), 240, f"{len(produced)} rows stored")
        _assert_exactly_once(rows, topic, produced)
        [(reason, detail)] = rows.rows("SELECT reason, detail FROM rejects")
        assert reason == "corrupt" and "crashed the worker process (SIGSEGV)" in detail
        [letter] = [json.loads(record.value) for record in
                    consume_all(broker.bootstrap, _api(broker), f"{topic}.dead-letter", 1)]
        assert letter["sample_key"] == "poison" and letter["reason"] == "corrupt"
        assert daemon.metric('ood_monitor_worker_restarts_total{role="scoring"}') == 1  # once, not a loop
        pids = _worker_pids(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(90) == 0
        _assert_nothing_left(daemon, pids, shm_before)
    finally:
        daemon.kill()
        rows.close()


# --- SIGTERM while a wait would outlast the grace ------------------------------------------------
# Every wait while stopping gets what is left of [stream] shutdown_grace_s; a worker still stuck
# at its end (a native call that cannot be interrupted) ends there, and what it had not committed
# is consumed again. The supervisor exits 0 within the grace (plus the workers' exit) in each case.

GRACE_S = 6.0
EXIT_SLACK_S = 4.0  # the supervisor's margin for its workers' exit (2 s), and the process's own


def _stops_within_the_grace(daemon: DaemonProcess) -> float:
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait_exit(GRACE_S + 60)
    took = time.monotonic() - started
    assert code == 0, daemon.log_tail()
    assert took <= GRACE_S + EXIT_SLACK_S, f"stopped after {took:.1f} s, the grace is {GRACE_S:g} s"
    return took


def _bounded(broker, tmp_path: Path, name: str, model_cache, **env) -> tuple[DaemonProcess, str]:
    topic = _new_topic(broker, name)
    scratch = tmp_path / f"{name}-tmp"
    scratch.mkdir(exist_ok=True)
    env = {"MONITOR_STREAM__SHUTDOWN_GRACE_S": str(GRACE_S), "TMPDIR": str(scratch),
           **{key: str(value) for key, value in env.items()}}
    daemon = DaemonProcess.configured(
        tmp_path, name, args=("--role", "scoring", "--workers", "1"), env=env,
        bootstrap=broker.bootstrap, api_version=broker.api_version or "auto", topic=topic, group=f"g-{topic}",
        store_url=f"sqlite:///{tmp_path / 'monitor.db'}", cache_dir=model_cache)
    return daemon, topic


def test_sigterm_while_the_sqlite_file_is_locked_stops_within_the_grace(kafka09, tmp_path, model_cache):
    daemon, topic = _bounded(kafka09, tmp_path, "locked", model_cache)
    daemon.start()
    rows = StoredRows(f"sqlite:///{tmp_path / 'monitor.db'}")
    lock = sqlite3.connect(tmp_path / "monitor.db", isolation_level=None)
    try:
        daemon.wait_ready(240)
        before = produce(kafka09.bootstrap, (0, 9), topic, image_stream(16, "before"))
        wait_until(lambda: rows.total() >= len(before), 120, "the first messages stored")
        pids = _worker_pids(daemon)
        lock.execute("BEGIN EXCLUSIVE")  # another program holds the database: every write waits
        produce(kafka09.bootstrap, (0, 9), topic, image_stream(16, "blocked"))
        wait_until(lambda: "storing a batch failed" in daemon.log_tail(20000), 60, "a write held up by the lock")
        _stops_within_the_grace(daemon)
        lock.execute("ROLLBACK")
        stored = rows.positions(topic)
        assert sorted(stored) == sorted(before)
        assert _committed(kafka09, topic) == _ends(before), "an offset was committed that was not stored"
        _assert_nothing_left(daemon, pids, set())
    finally:
        lock.close()
        daemon.kill()
        rows.close()


def test_sigterm_with_the_broker_stopped_stops_within_the_grace(kafka09, tmp_path, model_cache):
    daemon, topic = _bounded(kafka09, tmp_path, "nobroker", model_cache)
    daemon.start()
    rows = StoredRows(f"sqlite:///{tmp_path / 'monitor.db'}")
    try:
        daemon.wait_ready(240)
        before = produce(kafka09.bootstrap, (0, 9), topic, image_stream(16, "before"))
        wait_until(lambda: rows.total() >= len(before), 120, "the messages stored")
        pids = _worker_pids(daemon)
        kafka09.stop_kafka()  # the consumer, its commits and the producer all wait on a broker that is gone
        try:
            _stops_within_the_grace(daemon)
        finally:
            kafka09.start()
        _assert_nothing_left(daemon, pids, set())
    finally:
        daemon.kill()
        rows.close()


def test_sigterm_with_a_webhook_that_never_answers_stops_within_the_grace(kafka09, tmp_path, model_cache):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    daemon, topic = _bounded(kafka09, tmp_path, "webhook", model_cache,
                             MONITOR_ALERTS__WEBHOOK_URL=f"http://127.0.0.1:{silent.getsockname()[1]}/alerts",
                             MONITOR_ALERTS__WEBHOOK_TIMEOUT_S=120, MONITOR_STREAM__DEFAULT_THRESHOLD=-1e9)
    daemon.start()
    rows = StoredRows(f"sqlite:///{tmp_path / 'monitor.db'}")
    try:
        daemon.wait_ready(240)
        produced = produce(kafka09.bootstrap, (0, 9), topic, image_stream(16, "flagged"))
        wait_until(lambda: rows.total() >= len(produced), 120, "the messages stored")
        assert rows.rows("SELECT count(*) FROM samples WHERE flagged")[0][0] == len(produced)  # all alerted
        wait_until(lambda: _committed(kafka09, topic) == _ends(produced), 60, "the offsets committed")
        pids = _worker_pids(daemon)
        _stops_within_the_grace(daemon)  # the webhook still waits on its first alert
        _assert_nothing_left(daemon, pids, set())
    finally:
        silent.close()
        daemon.kill()
        rows.close()
