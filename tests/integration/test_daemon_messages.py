"""End to end on real brokers: every kind of message ends as exactly one score row or one reject row
plus a dead-letter message; flagged samples raise alerts; offsets are committed; probes answer."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid

import httpx
import pytest

from monitor.settings import settings_from_mapping
from monitor.stream.daemon import Daemon
from tests.integration.conftest import create_topic
from tests.integration.daemon_support import (
    CALIBRATION_SAMPLES,
    StoredRows,
    UndecodableHeaderKey,
    committed_offsets,
    consume_all,
    message_corpus,
)
from tests.services import Kafka09Broker, free_port, wait_until

pytestmark = pytest.mark.integration

MAX_BYTES = 8000


def _api_version(broker):
    return (0, 9) if isinstance(broker, Kafka09Broker) else None


def test_each_message_ends_as_one_row_and_rejects_as_dead_letters(broker, tmp_path, model_cache):
    topic = f"images-{uuid.uuid4().hex[:8]}"
    dead_letters, alerts = f"{topic}.dead-letter", f"{topic}.alerts"
    for name, partitions in ((topic, 2), (dead_letters, 1), (alerts, 1)):
        create_topic(broker, name, partitions)
    store_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    settings = settings_from_mapping({
        "model": {"spec": "demo", "device": "cpu", "cache_dir": str(model_cache),
                  "calibration_samples": CALIBRATION_SAMPLES},
        "kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": f"g-{topic}",
                  "api_version": broker.api_version, "session_timeout_ms": 6000,
                  "dead_letter_topic": dead_letters, "alerts_topic": alerts},
        "stream": {"batch_size": 4, "max_batch_wait_ms": 100, "default_threshold": -1e9},  # flags every image
        "imaging": {"max_bytes": MAX_BYTES},
        "store": {"url": store_url},
        "web": {"port": free_port()},
        "jobs": {"enabled": False},
    })
    daemon = Daemon(settings, install_signal_handlers=False)
    runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    runner.start()
    rows = StoredRows(store_url)
    try:
        wait_until(lambda: daemon.state.assigned_partitions == 2 or not runner.is_alive(), 90,
                   "the daemon to join its group")
        assert runner.is_alive()
        corpus = message_corpus(MAX_BYTES)
        expected_reasons = {name: reason for name, (_, reason) in corpus.items() if reason}
        valid = {name for name, (_, reason) in corpus.items() if reason is None}
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=_api_version(broker), acks="all")
        ends: dict[int, int] = {}
        for name, (value, _) in corpus.items():
            meta = producer.send(topic, value=value, key=name.encode()).get(60)
            ends[meta.partition] = meta.offset + 1
        if not isinstance(broker, Kafka09Broker):  # headers exist from 0.11: a type the bytes contradict
            meta = producer.send(topic, value=corpus["valid"][0], key=b"mislabelled",
                                 headers=[("content-type", b"image/jpeg")]).get(60)
            ends[meta.partition] = meta.offset + 1
            expected_reasons["mislabelled"] = "content_type_mismatch"
        producer.close()

        total = len(valid) + len(expected_reasons)
        wait_until(lambda: rows.total() == total, 90, f"{total} stored rows")
        stored_samples = {key for (key,) in rows.rows("SELECT sample_key FROM samples")}
        stored_rejects = dict(rows.rows("SELECT sample_key, reason FROM rejects"))
        assert stored_samples == valid
        assert stored_rejects == expected_reasons

        letters = [json.loads(record.value) for record in
                   consume_all(broker.bootstrap, _api_version(broker), dead_letters, len(expected_reasons))]
        assert {letter["sample_key"]: letter["reason"] for letter in letters} == expected_reasons
        for letter in letters:
            original = corpus.get(letter["sample_key"], corpus["valid"])[0]
            assert base64.b64decode(letter["value_base64"]) == original
            assert letter["source"]["topic"] == topic and letter["size"] == len(original)

        flagged = [json.loads(record.value) for record in
                   consume_all(broker.bootstrap, _api_version(broker), alerts, len(valid))]
        assert sorted(alert["sample_key"] for alert in flagged) == sorted(valid)
        assert {alert["kind"] for alert in flagged} == {"flagged_sample"}
        assert all(alert["threshold"] == -1e9 and alert["model"]["name"] == "demo" for alert in flagged)

        wait_until(lambda: {p: o for p, o in committed_offsets(broker.bootstrap, _api_version(broker),
                                                                f"g-{topic}", topic, 2).items() if o} == ends,
                   60, f"committed offsets {ends}")

        # The probes of this pipeline, served as a worker's supervisor serves them (monitor.service).
        from monitor.service.http import HttpServer, build_http_app

        http = HttpServer(build_http_app(daemon.state)[0], "127.0.0.1", settings.web.port).start()
        base = f"http://127.0.0.1:{http.port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert f"ood_monitor_images_scored_total {float(len(valid))}" in metrics
        assert 'ood_monitor_rejects_total{reason="empty"} 1.0' in metrics
        assert "ood_monitor_batch_seconds_bucket" in metrics and "ood_monitor_consumer_lag" in metrics
        http.stop()
    finally:
        daemon.request_stop(5.0)
        runner.join(60)
        rows.close()
    assert not runner.is_alive()


@contextlib.contextmanager
def _running_daemon(settings, store_url):
    """A daemon consuming on a thread, and the rows it stores; stopped and closed afterwards."""
    daemon = Daemon(settings, install_signal_handlers=False)
    runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    runner.start()
    rows = StoredRows(store_url)
    try:
        yield runner, rows
    finally:
        daemon.request_stop(5.0)
        runner.join(60)
        rows.close()


def _one_partition_daemon(tansu, tmp_path, model_cache):
    """A topic of one partition with its dead-letter topic, and settings of a daemon on it (SQLite)."""
    topic = f"images-{uuid.uuid4().hex[:8]}"
    dead_letters = f"{topic}.dead-letter"
    for name in (topic, dead_letters):
        create_topic(tansu, name, 1)
    store_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    settings = settings_from_mapping({
        "model": {"spec": "demo", "device": "cpu", "cache_dir": str(model_cache),
                  "calibration_samples": CALIBRATION_SAMPLES},
        "kafka": {"bootstrap_servers": [tansu.bootstrap], "topics": [topic], "group_id": f"g-{topic}",
                  "session_timeout_ms": 6000, "dead_letter_topic": dead_letters},
        "stream": {"batch_size": 4, "max_batch_wait_ms": 100, "http": False},
        "store": {"url": store_url},
        "jobs": {"enabled": False},
    })
    return topic, dead_letters, store_url, settings


def test_records_the_client_cannot_reach_behind_an_unreadable_one_say_so(tansu, tmp_path, model_cache):
    topic, dead_letters, store_url, settings = _one_partition_daemon(tansu, tmp_path, model_cache)
    from kafka import KafkaProducer

    valid = message_corpus(MAX_BYTES)["valid"][0]
    # One record batch: the unreadable record, then two readable ones the client cannot get to.
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=1000)
    futures = [producer.send(topic, value=valid, key=b"broken", headers=[(UndecodableHeaderKey("x"), b"1")]),
               producer.send(topic, value=valid, key=b"mate-1"), producer.send(topic, value=valid, key=b"mate-2")]
    producer.flush()
    broken, mate_1, mate_2 = (future.get(60).offset for future in futures)
    after = producer.send(topic, value=valid, key=b"after").get(60).offset
    producer.close()

    with _running_daemon(settings, store_url) as (runner, rows):
        wait_until(lambda: rows.total() == 4 or not runner.is_alive(), 90, "4 stored rows")
        assert runner.is_alive()
        assert {key for (key,) in rows.rows("SELECT sample_key FROM samples")} == {"after"}
        details = {key: detail for key, detail in rows.rows("SELECT sample_key, detail FROM rejects")}
        assert set(details) == {f"{topic}/0/{offset}" for offset in (broken, mate_1, mate_2)}
        assert "same error as at offset" not in details[f"{topic}/0/{broken}"]
        for offset in (mate_1, mate_2):  # not called unreadable themselves: the client stops before them
            assert f"the Kafka client fails here with the same error as at offset {broken}, most likely because " \
                   "this record is behind that one in its record batch" in details[f"{topic}/0/{offset}"], details
        letters = [json.loads(record.value) for record in consume_all(tansu.bootstrap, None, dead_letters, 3)]
        assert sorted(letter["source"]["offset"] for letter in letters) == [broken, mate_1, mate_2]
        wait_until(lambda: committed_offsets(tansu.bootstrap, None, f"g-{topic}", topic, 1).get(0) == after + 1,
                   60, "the offsets committed past the whole record batch")


def test_a_record_the_client_cannot_parse_is_rejected_and_the_daemon_goes_on(tansu, tmp_path, model_cache):
    topic, dead_letters, store_url, settings = _one_partition_daemon(tansu, tmp_path, model_cache)
    from kafka import KafkaProducer

    valid = message_corpus(MAX_BYTES)["valid"][0]
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    offsets = {}
    # One record per request, so the unreadable one is alone in its record batch.
    offsets["before"] = producer.send(topic, value=valid, key=b"before").get(60).offset
    offsets["broken"] = producer.send(topic, value=valid, key=b"broken",
                                      headers=[(UndecodableHeaderKey("x"), b"1")]).get(60).offset
    offsets["after"] = producer.send(topic, value=valid, key=b"after").get(60).offset
    producer.close()

    with _running_daemon(settings, store_url) as (runner, rows):
        wait_until(lambda: rows.total() == 3 or not runner.is_alive(), 90, "3 stored rows")
        assert runner.is_alive(), "the daemon stopped on a record it cannot parse"
        broken_key = f"{topic}/0/{offsets['broken']}"  # the key is inside the unreadable record
        assert {key for (key,) in rows.rows("SELECT sample_key FROM samples")} == {"before", "after"}
        assert dict(rows.rows("SELECT sample_key, reason FROM rejects")) == {broken_key: "unreadable_record"}
        [letter] = [json.loads(record.value) for record in consume_all(tansu.bootstrap, None, dead_letters, 1)]
        assert letter["reason"] == "unreadable_record" and "CorruptRecordError" in letter["detail"]
        assert (letter["source"]["topic"], letter["source"]["offset"]) == (topic, offsets["broken"])
        wait_until(lambda: committed_offsets(tansu.bootstrap, None, f"g-{topic}", topic, 1).get(0)
                   == offsets["after"] + 1, 60, "the offsets committed past the unreadable record")
    assert not runner.is_alive()


DURING = 300


def test_while_the_database_is_locked_the_consumer_stays_in_its_group(tansu, tmp_path, model_cache, caplog):
    # The store fails for longer than the poll interval. A consumer that stopped polling while it
    # waits would be taken out of its group (and its batch replayed by the next owner); this one
    # polls on with its partitions paused and stores everything once the database is back.
    import logging
    import sqlite3
    import time

    topic = f"images-{uuid.uuid4().hex[:8]}"
    for name in (topic, f"{topic}.dead-letter", f"{topic}.alerts"):
        create_topic(tansu, name, 1)
    database = tmp_path / "monitor.db"
    store_url = f"sqlite:///{database}"
    settings = settings_from_mapping({
        "model": {"spec": "demo", "device": "cpu", "cache_dir": str(model_cache),
                  "calibration_samples": CALIBRATION_SAMPLES},
        "kafka": {"bootstrap_servers": [tansu.bootstrap], "topics": [topic], "group_id": f"g-{topic}",
                  "session_timeout_ms": 6000, "max_poll_interval_ms": 3000,
                  "dead_letter_topic": f"{topic}.dead-letter", "alerts_topic": f"{topic}.alerts"},
        "stream": {"batch_size": 4, "max_batch_wait_ms": 100, "http": False, "store_retry_initial_s": 0.2,
                   "store_retry_max_s": 0.5},
        "store": {"url": store_url},
        "jobs": {"enabled": False},
    })
    from kafka import KafkaProducer

    valid = message_corpus(MAX_BYTES)["valid"][0]
    daemon = Daemon(settings, install_signal_handlers=False)
    runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    caplog.set_level(logging.INFO, logger="monitor.stream")
    runner.start()
    rows = StoredRows(store_url)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    try:
        wait_until(lambda: daemon.state.assigned_partitions == 1 or not runner.is_alive(), 90,
                   "the daemon to join its group")
        producer.send(topic, value=valid, key=b"first").get(60)
        wait_until(lambda: rows.total() == 1, 60, "the first message stored")

        lock = sqlite3.connect(database, timeout=1)
        lock.execute("BEGIN EXCLUSIVE")  # every write now fails after the busy timeout, and is retried
        try:
            # More than the pipeline holds (decoding, a batch, two at each worker): the consumer
            # thread would block in a submit and stop polling.
            for index in range(DURING):
                producer.send(topic, value=valid, key=f"during-{index}".encode())
            producer.flush(60)
            wait_until(lambda: daemon.state.last_store_ok is False, 60, "the writes to fail")
            time.sleep(8)  # the outage itself: over twice the 3 s poll interval, with the pipeline full
        finally:
            lock.rollback()
            lock.close()
        wait_until(lambda: rows.total() == 1 + DURING, 120, "every message stored once the database is back")
        assert runner.is_alive()
        assert "partitions revoked" not in caplog.text
    finally:
        producer.close()
        daemon.request_stop(5.0)
        runner.join(60)
        rows.close()
