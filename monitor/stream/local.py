"""An in-memory broker with the few operations the stream uses, for fast tests of the pipeline.

It keeps partitions as lists and committed offsets per group, like a broker that never fails on its
own; tests make it fail on purpose (`fail_sends`). The real brokers (Apache Kafka 0.9, Tansu) are
exercised by the integration tests.
"""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Iterable

from kafka.errors import MessageSizeTooLargeError

from monitor.stream.messages import InboundMessage


@dataclass(frozen=True)
class LocalRecord:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class LocalBroker:
    def __init__(self, default_partitions: int = 1):
        self.default_partitions = default_partitions
        self.partitions: dict[str, list[list[LocalRecord]]] = {}
        self.committed: dict[tuple[str, str, int], int] = {}
        self.fail_sends = 0  # the next N sends fail, as a broker that is down would
        self.max_message_bytes: int | None = None  # larger sends are refused, as message.max.bytes does
        self._lock = threading.Lock()

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        with self._lock:
            self.partitions.setdefault(topic, [[] for _ in range(partitions or self.default_partitions)])

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Iterable[tuple[str, bytes]] = (), partition: int | None = None) -> tuple[int, int]:
        self.create_topic(topic)
        with self._lock:
            logs = self.partitions[topic]
            if partition is None:
                partition = zlib.crc32(key) % len(logs) if key else sum(map(len, logs)) % len(logs)
            logs[partition].append(LocalRecord(key, value, tuple(headers)))
            return partition, len(logs[partition]) - 1

    def records(self, topic: str) -> list[LocalRecord]:
        with self._lock:
            return [record for log in self.partitions.get(topic, []) for record in log]

    def committed_offset(self, group: str, topic: str, partition: int) -> int | None:
        return self.committed.get((group, topic, partition))


class LocalConsumer:
    """One consumer of a group that owns every partition of its topics."""

    def __init__(self, broker: LocalBroker, topics: Iterable[str], group_id: str):
        self.broker = broker
        self.topics = list(topics)
        self.group_id = group_id
        for topic in self.topics:
            broker.create_topic(topic)
        self.positions: dict[tuple[str, int], int] = {}
        self.seek_to_committed()

    def seek_to_committed(self) -> None:
        """Start again from the committed offsets, as a restarted process does."""
        self.positions = {}
        for topic in self.topics:
            for partition in range(len(self.broker.partitions[topic])):
                committed = self.broker.committed_offset(self.group_id, topic, partition)
                self.positions[(topic, partition)] = committed or 0

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> list[InboundMessage]:
        max_records = max_records or 500
        out: list[InboundMessage] = []
        with self.broker._lock:
            for (topic, partition), position in self.positions.items():
                log = self.broker.partitions[topic][partition]
                while position < len(log) and len(out) < max_records:
                    record = log[position]
                    out.append(InboundMessage(topic, partition, position, record.key, record.value, record.headers))
                    position += 1
                self.positions[(topic, partition)] = position
        return out

    def commit(self, offsets: dict[tuple[str, int], int], timeout_s: float | None = None) -> None:
        with self.broker._lock:
            for (topic, partition), offset in offsets.items():
                key = (self.group_id, topic, partition)
                self.broker.committed[key] = max(offset, self.broker.committed.get(key, 0))

    def lag(self) -> int:
        return sum(len(self.broker.partitions[topic][partition]) - position
                   for (topic, partition), position in self.positions.items())


class _SentRecord:
    def __init__(self, future: Future):
        self.future = future

    def get(self, timeout: float | None = None):
        return self.future.result(timeout)


class LocalProducer:
    def __init__(self, broker: LocalBroker):
        self.broker = broker

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: Iterable[tuple[str, bytes]] | None = None) -> _SentRecord:
        future: Future = Future()
        if self.broker.fail_sends > 0:
            self.broker.fail_sends -= 1
            future.set_exception(ConnectionError("local broker: send refused (simulated outage)"))
        elif self.broker.max_message_bytes is not None and len(value) > self.broker.max_message_bytes:
            future.set_exception(MessageSizeTooLargeError(f"local broker: {len(value)} bytes is over the limit"))
        else:
            future.set_result(self.broker.produce(topic, value, key, headers or ()))
        return _SentRecord(future)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass
