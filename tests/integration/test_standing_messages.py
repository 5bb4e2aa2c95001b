"""Standing suite, messages: what real producers send, on both real brokers (Apache Kafka 0.9, Tansu).

- every kind of message of `hostile_message_cases` (daemon_support.py: empty, null, truncated, text,
  pixel bombs in each picture format and in .npy, wrong channels, NaN and Inf, pickled objects, 16-bit,
  CMYK, palette with transparency, EXIF-rotated, animated GIF, TIFF, oversized, content-type
  mismatches, non-UTF-8 keys and header keys, markup in keys, 255+ character keys) ends as exactly one
  row, and a reject as exactly one dead letter with its reason;
- every compression codec the broker speaks, from a kafka-python producer with `compression_type`,
  is read and scored (Kafka 0.9: gzip, snappy, lz4; Tansu: gzip, snappy, lz4, zstd);
- a batch the client cannot decompress (its codec missing, or its bytes corrupt) becomes
  `unreadable_record` rejects with dead letters, and the daemon goes on.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field

import pytest

from monitor.settings import settings_from_mapping
from monitor.stream.daemon import Daemon
from tests.integration.conftest import create_topic
from tests.integration.daemon_support import (
    CALIBRATION_SAMPLES,
    MessageCase,
    StoredRows,
    committed_offsets,
    consume_all,
    fashion_samples,
    hostile_message_cases,
)
from tests.services import Kafka09Broker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.standing]

MAX_BYTES = 8000
MAX_PIXELS = 1_000_000
PARTITIONS = 2
CASES = hostile_message_cases(MAX_BYTES, MAX_PIXELS)
BROKERS = ("kafka-0.9", "tansu")
CODECS = {"kafka-0.9": ("none", "gzip", "snappy", "lz4"), "tansu": ("none", "gzip", "snappy", "lz4", "zstd")}
RECORDS_PER_BATCH = 4


def _api_version(name: str):
    return (0, 9) if name == "kafka-0.9" else None


@dataclass
class Delivered:
    """What one daemon made of the whole corpus on one broker, read back by source position."""

    broker: str
    topic: str
    positions: dict[str, list[tuple[int, int]]]  # case or codec name -> where its messages went
    rows: dict[tuple[int, int], list[tuple]] = field(default_factory=dict)  # (kind, key, reason, detail)
    letters: dict[tuple[int, int], list[dict]] = field(default_factory=dict)


def _daemon_settings(broker, topic: str, store_url: str, model_cache, **stream):
    return settings_from_mapping({
        "model": {"spec": "demo", "device": "cpu", "cache_dir": str(model_cache),
                  "calibration_samples": CALIBRATION_SAMPLES},
        "kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": f"g-{topic}",
                  "api_version": broker.api_version, "session_timeout_ms": 6000,
                  "dead_letter_topic": f"{topic}.dead-letter", "alerts_topic": f"{topic}.alerts"},
        "stream": {"batch_size": 8, "max_batch_wait_ms": 100, "http": False, **stream},
        "imaging": {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS},
        "store": {"url": store_url},
        "jobs": {"enabled": False},
    }, environ={})


class _RunningDaemon:
    """A daemon consuming on a thread of this process (so a test may change the process, as an
    install without a codec library would be)."""

    def __init__(self, settings):
        self.daemon = Daemon(settings, install_signal_handlers=False)
        # A daemon thread: one that never stops (its broker died under it) must fail its test, not
        # keep the test run from ever exiting.
        self.thread = threading.Thread(target=self.daemon.run, name="daemon", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def joined(self, partitions: int) -> None:
        wait_until(lambda: self.daemon.state.assigned_partitions == partitions or not self.thread.is_alive(), 90,
                   "the daemon to join its group")
        assert self.thread.is_alive(), "the daemon stopped at start"

    def __exit__(self, exc_type, *exc):
        self.daemon.request_stop(5.0)
        self.thread.join(60)
        if self.thread.is_alive() and exc_type is None:
            raise AssertionError("the daemon did not stop within 60 s of its stop request")


def _read_back(rows: StoredRows, broker, name: str, topic: str, delivered: Delivered, rejects: int) -> None:
    for partition, offset, kind, key, reason, detail in rows.rows(
            "SELECT source_partition, source_offset, 'sample', sample_key, NULL, NULL FROM samples "
            "UNION ALL SELECT source_partition, source_offset, 'reject', sample_key, reason, detail FROM rejects"):
        delivered.rows.setdefault((int(partition), int(offset)), []).append((kind, key, reason, detail))
    for record in consume_all(broker.bootstrap, _api_version(name), f"{topic}.dead-letter", rejects):
        letter = json.loads(record.value)
        position = (letter["source"]["partition"], letter["source"]["offset"])
        delivered.letters.setdefault(position, []).append(letter)


def _deliver(name: str, broker, model_cache, tmp_path_factory) -> Delivered:
    """One daemon on `broker`, the whole corpus sent to it, everything it stored and dead-lettered."""
    from kafka import KafkaProducer

    topic = f"hostile-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, PARTITIONS)
    create_topic(broker, f"{topic}.dead-letter", 1)
    store_url = f"sqlite:///{tmp_path_factory.mktemp('messages') / 'monitor.db'}"
    result = Delivered(name, topic, {})
    rows = StoredRows(store_url)
    try:
        with _RunningDaemon(_daemon_settings(broker, topic, store_url, model_cache)) as running:
            running.joined(PARTITIONS)
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=_api_version(name), acks="all")
            for case in CASES:
                if case.needs_headers and name == "kafka-0.9":
                    continue  # Kafka before 0.11 carries no headers
                # One record per request: a record the client cannot parse is then alone in its batch.
                meta = producer.send(topic, value=case.value, key=case.key_bytes(), headers=list(case.headers)).get(60)
                result.positions[case.name] = [(meta.partition, meta.offset)]
            producer.close()
            image = fashion_samples()[1][1]
            for codec in CODECS[name]:
                compressing = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=_api_version(name),
                                            acks="all", linger_ms=200,
                                            compression_type=None if codec == "none" else codec)
                futures = [compressing.send(topic, value=image, key=f"codec-{codec}-{index}".encode(), partition=0)
                           for index in range(RECORDS_PER_BATCH)]
                compressing.flush(60)
                result.positions[f"codec-{codec}"] = [(meta.partition, meta.offset)
                                                      for meta in (future.get(60) for future in futures)]
                compressing.close()
            total = sum(len(positions) for positions in result.positions.values())
            wait_until(lambda: rows.total() >= total or not running.thread.is_alive(), 120, f"{total} stored rows")
            assert running.thread.is_alive(), "the daemon stopped"
            rejects = sum(1 for case in CASES if case.reason and case.name in result.positions)
            _read_back(rows, broker, name, topic, result, rejects)
            ends: dict[int, int] = {}
            for positions in result.positions.values():
                for partition, offset in positions:
                    ends[partition] = max(ends.get(partition, 0), offset + 1)
            wait_until(lambda: {p: o for p, o in committed_offsets(broker.bootstrap, _api_version(name),
                                                                    f"g-{topic}", topic, PARTITIONS).items() if o}
                       == ends, 60, f"offsets {ends} committed")
            assert running.thread.is_alive()
    finally:
        rows.close()
    return result


@pytest.fixture(scope="module")
def deliveries(request, model_cache, tmp_path_factory):
    """Per broker, the corpus delivered once (on first use), whatever order the tests run in."""
    done: dict[str, Delivered] = {}

    def delivered(name: str) -> Delivered:
        if name not in done:
            broker = request.getfixturevalue("kafka09" if name == "kafka-0.9" else "tansu")
            done[name] = _deliver(name, broker, model_cache, tmp_path_factory)
        return done[name]

    return delivered


def _stored_key(case: MessageCase, position: tuple[int, int], topic: str) -> str:
    if case.stored_key == "":
        return f"{topic}/{position[0]}/{position[1]}"
    return case.stored_key if case.stored_key is not None else case.name


@pytest.mark.parametrize("broker_name, case", [
    pytest.param(broker, case, id=f"{broker}-{case.name}")
    for broker in BROKERS for case in CASES if not (case.needs_headers and broker == "kafka-0.9")
])
def test_each_kind_of_message_ends_as_one_row_and_a_reject_as_one_dead_letter(deliveries, broker_name, case):
    delivered = deliveries(broker_name)
    [position] = delivered.positions[case.name]
    [(kind, key, reason, detail)] = delivered.rows.get(position, [])  # exactly one row
    letters = delivered.letters.get(position, [])
    if case.reason is None:
        assert (kind, reason) == ("sample", None), detail
        assert key == _stored_key(case, position, delivered.topic)
        assert letters == []
        return
    assert (kind, reason) == ("reject", case.reason), detail
    if case.detail is not None:
        assert case.detail in detail
    [letter] = letters  # exactly one dead letter
    assert letter["reason"] == case.reason and letter["detail"] == detail
    if case.reason != "unreadable_record":  # the client could read it: the letter carries it byte for byte
        assert key == _stored_key(case, position, delivered.topic)
        assert base64.b64decode(letter["value_base64"]) == (case.value or b"")
        assert letter["key_base64"] == base64.b64encode(case.key_bytes()).decode()


@pytest.mark.parametrize("broker_name, codec", [
    pytest.param(broker, codec, id=f"{broker}-{codec}") for broker in BROKERS for codec in CODECS[broker]
])
def test_every_compression_codec_from_a_real_producer_is_scored(deliveries, broker_name, codec):
    delivered = deliveries(broker_name)
    positions = delivered.positions[f"codec-{codec}"]
    stored = [delivered.rows.get(position, []) for position in positions]
    assert [[(kind, key) for kind, key, _, _ in found] for found in stored] == [
        [("sample", f"codec-{codec}-{index}")] for index in range(RECORDS_PER_BATCH)]
    assert not any(delivered.letters.get(position) for position in positions)


# --- a record batch the client cannot decompress ---------------------------------------------------


def _unreadable_then_readable(broker, name: str, topic: str, store_url: str, model_cache,
                              unreadable: list[int], readable: list[int], reason_text: str) -> None:
    """The daemon rejects each record of `unreadable` (one dead letter each) and scores `readable`."""
    with _RunningDaemon(_daemon_settings(broker, topic, store_url, model_cache)) as running:
        rows = StoredRows(store_url)
        try:
            expected = len(unreadable) + len(readable)
            wait_until(lambda: rows.total() >= expected or not running.thread.is_alive(), 90, f"{expected} rows")
            assert running.thread.is_alive(), "the daemon stopped on a batch it cannot decompress"
            rejected = {int(offset): (reason, detail) for offset, reason, detail in
                        rows.rows("SELECT source_offset, reason, detail FROM rejects")}
            assert sorted(rejected) == unreadable
            for reason, detail in rejected.values():
                assert reason == "unreadable_record"
                assert "cannot decompress the record batch" in detail and reason_text in detail, detail
            assert sorted(int(o) for (o,) in rows.rows("SELECT source_offset FROM samples")) == readable
            letters = consume_all(broker.bootstrap, _api_version(name), f"{topic}.dead-letter", len(unreadable))
            assert sorted(json.loads(record.value)["source"]["offset"] for record in letters) == unreadable
            wait_until(lambda: committed_offsets(broker.bootstrap, _api_version(name), f"g-{topic}", topic, 1).get(0)
                       == max(readable) + 1, 60, "the offsets committed past the batch")
        finally:
            rows.close()


def test_a_batch_whose_codec_is_missing_becomes_rejects_and_the_daemon_goes_on(broker, tmp_path, model_cache,
                                                                                monkeypatch):
    """An install without python-snappy: made in this test's process only, where the daemon runs, by
    taking the library from kafka-python's codec module (what kafka-python sees when the import fails)."""
    import kafka.codec
    from kafka import KafkaProducer

    name = "kafka-0.9" if isinstance(broker, Kafka09Broker) else "tansu"
    topic = f"codec-{uuid.uuid4().hex[:8]}"
    for created in (topic, f"{topic}.dead-letter"):
        create_topic(broker, created, 1)
    image = fashion_samples()[2][1]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=_api_version(name), acks="all",
                             linger_ms=200, compression_type="snappy")
    futures = [producer.send(topic, value=image, key=f"snappy-{index}".encode()) for index in range(3)]
    producer.flush(60)
    unreadable = [future.get(60).offset for future in futures]
    producer.close()
    plain = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=_api_version(name), acks="all")
    readable = [plain.send(topic, value=image, key=b"after").get(60).offset]
    plain.close()

    monkeypatch.setattr(kafka.codec, "snappy", None)
    assert not kafka.codec.has_snappy()
    _unreadable_then_readable(broker, name, topic, f"sqlite:///{tmp_path / 'monitor.db'}", model_cache,
                              unreadable, readable, "Libraries for snappy compression codec not found")


def test_a_corrupt_compressed_batch_becomes_rejects_and_the_daemon_goes_on(tansu, tmp_path, model_cache, monkeypatch):
    """A producer whose gzip output is garbage: the batch's checksum is right (it covers the compressed
    bytes), so only decompressing fails. Kafka 0.9 recompresses on arrival and refuses such a batch."""
    import kafka.record.default_records as record_format
    from kafka import KafkaProducer

    topic = f"corrupt-{uuid.uuid4().hex[:8]}"
    for created in (topic, f"{topic}.dead-letter"):
        create_topic(tansu, created, 1)
    image = fashion_samples()[3][1]
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=200, compression_type="gzip")
    with monkeypatch.context() as patched:
        patched.setattr(record_format, "gzip_encode", lambda payload, *args, **kwargs: b"\x1f\x8b not gzip at all")
        futures = [producer.send(topic, value=image, key=f"garbled-{index}".encode()) for index in range(3)]
        producer.flush(60)
    unreadable = [future.get(60).offset for future in futures]
    readable = [producer.send(topic, value=image, key=b"after").get(60).offset]
    producer.close()
    _unreadable_then_readable(tansu, "tansu", topic, f"sqlite:///{tmp_path / 'monitor.db'}", model_cache,
                              unreadable, readable, "BadGzipFile")


def test_a_record_the_client_fails_on_after_others_is_rejected_even_when_the_partition_is_paused_next(tansu):
    """kafka-python returns the records before one it cannot read and keeps the failure for its next
    poll, where it raises it only if the partition is fetchable: the daemon pauses its partitions
    while its pipeline is congested, and the client then looped for ever on that partition once
    resumed (the consumer never returned; the whole Tansu corpus above stalled in two runs of three).
    The failure is taken in the poll that returned the records before it."""
    from kafka import KafkaProducer

    from monitor.stream.kafka_backend import KafkaSource, make_consumer

    unreadable = next(case for case in CASES if case.name == "non-utf8-header-key")
    topic = f"held-{uuid.uuid4().hex[:8]}"
    create_topic(tansu, topic, 1)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    image = fashion_samples()[1][1]
    before = [producer.send(topic, value=image, key=f"before-{index}".encode()).get(60).offset for index in range(3)]
    failing = producer.send(topic, value=unreadable.value, key=unreadable.key_bytes(),
                            headers=list(unreadable.headers)).get(60).offset
    after = [producer.send(topic, value=image, key=f"after-{index}".encode()).get(60).offset for index in range(2)]
    producer.close()

    settings = settings_from_mapping({"kafka": {"bootstrap_servers": [tansu.bootstrap], "topics": [topic],
                                                "group_id": f"g-{topic}", "auto_offset_reset": "earliest"}},
                                     environ={})
    source = KafkaSource(make_consumer(settings.kafka), [topic])
    try:
        # Every record is in the topic before the first fetch: one response carries them all, so the
        # client reads the three before the failing one and holds the failure back.
        seen = list(wait_until(lambda: source.poll(timeout_ms=200), 60, "the first records"))
        source.pause(True)  # right after, as the daemon does while its pipeline is congested
        source.poll(timeout_ms=200)
        source.pause(False)
        expected = [*before, failing, *after]
        poller = threading.Thread(target=lambda: wait_until(
            lambda: seen.extend(source.poll(timeout_ms=200)) or len(seen) >= len(expected), 60, "every record"),
            daemon=True)
        poller.start()
        poller.join(90)
        assert not poller.is_alive(), "the consumer never returned from its poll"
        assert [message.offset for message in seen] == expected
        assert [message.offset for message in seen if message.unreadable] == [failing]
    finally:
        source.consumer.close()
