"""The consumer side of the daemon: a group member built from [kafka] settings, and its source.

The consumer is in a group with auto-commit off: offsets are committed by the pipeline's last step
only. On a rebalance the batch in flight is finished (stored, published, committed) before the
partitions are given up, so their new owner starts where this process stopped.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from monitor.errors import ConfigError
from monitor.outbound.kafka import client_options, unreachable
from monitor.stream.messages import UNREADABLE, InboundMessage

log = logging.getLogger(__name__)


def make_consumer(kafka: Any, max_wait_ms: int = 500, **overrides: Any):
    """A group member with auto-commit off; a fetch waits at most `max_wait_ms` for new messages (the
    batch's own wait bounds the latency, so the broker should not hold fetches longer)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    options = client_options(kafka)
    options.update(
        group_id=kafka.group_id, enable_auto_commit=False, auto_offset_reset=kafka.auto_offset_reset,
        max_poll_records=kafka.max_poll_records, session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(100, kafka.session_timeout_ms // 3), fetch_max_wait_ms=max(10, max_wait_ms),
        request_timeout_ms=max(kafka.request_timeout_ms, kafka.session_timeout_ms + 5000),
    )
    version = kafka.api_version_tuple()
    if version is None or version >= (0, 10, 1):
        # Brokers before 0.10.1 have no poll interval of their own: the session timeout is it.
        options["max_poll_interval_ms"] = kafka.max_poll_interval_ms
    options.update(overrides)
    try:
        return KafkaConsumer(**options)
    except KafkaError as error:
        raise unreachable(kafka, error) from None
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(f"[kafka]: the Kafka client refused the settings: {error}") from None


class KafkaSource:
    """The consumer side of the daemon: poll messages, commit offsets, follow rebalances."""

    def __init__(self, consumer: Any, topics: list[str], *, on_revoke: Callable[[], None] | None = None,
                 on_assign: Callable[[int], None] | None = None):
        from kafka import ConsumerRebalanceListener

        self.consumer = consumer
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self._lag_checked_at = 0.0
        self._lag: int | None = None
        self._holding = False
        # The client calls the rebalance listener on its network thread, which must not block on
        # itself: a commit made there (the batch finished before giving up the partitions) is sent
        # without waiting, ahead of the request to rejoin the group, while this member's generation
        # still holds.
        self._in_rebalance = False
        self.revocations = 0  # rebalances that took partitions away (messages polled before are dropped)
        # Per partition: (offset of the record the client first failed on, last offset stepped over, error).
        self._unreadable: dict[Any, tuple[int, int, str]] = {}
        source = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if revoked:
                    source.revocations += 1
                    log.info("partitions revoked: %s", _names(revoked))
                    if source.on_revoke:
                        source._in_rebalance = True
                        try:
                            source.on_revoke()
                        finally:
                            source._in_rebalance = False

            def on_partitions_assigned(self, assigned):
                log.info("partitions assigned: %s", _names(assigned) or "none")
                if source.on_assign:
                    source.on_assign(len(assigned))

        consumer.subscribe(topics=list(topics), listener=Listener())

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[InboundMessage]:
        try:
            batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except Exception as error:
            if not _raised_parsing_records(error):
                raise
            # kafka-python cannot read the record at a partition's position (a failed checksum, a
            # header key that is not UTF-8, a broken structure, a batch compressed with a codec it
            # cannot decompress) and would raise again at every poll: the daemon would stop, and
            # stop again after each restart. Step over it; it becomes a reject (and a dead letter)
            # like any bad input, and stays in the topic.
            return [self._skip_unreadable(error)]
        messages = [InboundMessage.from_kafka(record) for records in batches.values() for record in records]
        held_back = self._take_held_back_failure()
        if held_back is not None:
            messages.append(held_back)
        messages.sort(key=lambda message: (message.topic, message.partition, message.offset))
        return messages

    def _take_held_back_failure(self) -> InboundMessage | None:
        """The reject for a record kafka-python failed on after returning the records before it.

        The client keeps that failure for its next poll and raises it only if the partition is
        fetchable then; a partition the daemon paused meanwhile (a congested pipeline) loses it,
        and the client's next read of that partition loops for ever on its spent record iterator
        (the consumer never returns). So the failure is taken now, in the poll that returned the
        records before it: the record is stepped over and rejected as when the client raises at
        once. Private state of the pinned kafka-python (test_standing_messages guards it)."""
        fetcher = getattr(self.consumer, "_fetcher", None)
        held = getattr(fetcher, "_next_in_line_exception_metadata", None)
        if held is None or not _raised_parsing_records(held.exception):
            return None
        fetcher._next_in_line_exception_metadata = None
        if self.consumer.position(held.partition) != held.fetched_offset:
            return None  # the client would drop it too: the partition moved on
        return self._skip_unreadable(held.exception, held.partition)

    def _skip_unreadable(self, error: Exception, partition: Any = None) -> InboundMessage:
        """The reject message for the record kafka-python failed on, after seeking past it.

        Which partition failed is not part of the error: kafka-python keeps the records it was
        parsing in its fetcher (a private attribute; kafka-python is pinned and an integration
        test guards this). The record sits at that partition's position. A record after it in
        the same record batch cannot be reached either: the client parses the batch from its
        start again and fails on the same record, so the same error comes back at the next
        position. Those records are stepped over the same way, and their rejects say so rather
        than call them unreadable themselves. A batch that cannot be decompressed fails the
        same way at each of its records, and each reject says that.
        """
        if partition is None:
            failed = getattr(getattr(self.consumer, "_fetcher", None), "_next_partition_records", None)
            partition = getattr(failed, "topic_partition", None)
        if partition is None:
            raise error  # nothing to step over: stop rather than skip blindly
        offset = self.consumer.position(partition)
        self.consumer.seek(partition, offset + 1)
        reason = str(error) if str(error).startswith(type(error).__name__) else f"{type(error).__name__}: {error}"
        first, last, previous = self._unreadable.get(partition, (None, None, None))
        if _raised_decompressing(error):
            self._unreadable[partition] = (offset, offset, reason)
            log.error("%s/%s/%s: the Kafka client cannot decompress the record batch holding this record (%s); "
                      "it is rejected as %s and stays in the topic", partition.topic, partition.partition, offset,
                      error, UNREADABLE)
            detail = f"the Kafka client cannot decompress the record batch that holds this record ({reason})"
        elif last == offset - 1 and previous == reason:  # the same failure, one record further on
            self._unreadable[partition] = (first, offset, reason)
            # Most likely a readable record of the same batch; a record unreadable itself in a batch of
            # its own would fail the same way, and the client does not say which batch it parsed.
            log.error("%s/%s/%s: the Kafka client fails here as at offset %s, most likely because this record "
                      "is behind that one in its record batch; it is rejected as %s and stays in the topic",
                      partition.topic, partition.partition, offset, first, UNREADABLE)
            detail = (f"the Kafka client fails here with the same error as at offset {first}, most likely because "
                      f"this record is behind that one in its record batch and cannot be reached ({reason})")
        else:
            self._unreadable[partition] = (offset, offset, reason)
            log.error("%s/%s/%s: the Kafka client cannot read this record (%s); it is rejected as %s "
                      "and stays in the topic", partition.topic, partition.partition, offset, error, UNREADABLE)
            detail = reason
        return InboundMessage(topic=partition.topic, partition=partition.partition, offset=offset,
                              key=None, value=None, unreadable=detail)

    def pause(self, hold: bool) -> None:
        """Pause every assigned partition (again at each call: a rebalance may add some), or
        resume them. Paused partitions still count as consumed for the group: polls go on."""
        if hold:
            assigned = self.consumer.assignment()
            if assigned:
                self.consumer.pause(*assigned)
            self._holding = True
        elif self._holding:
            paused = self.consumer.paused()
            if paused:
                self.consumer.resume(*paused)
            self._holding = False

    def rewind(self, messages: Any) -> None:
        """Poll `messages` again (those of partitions still assigned): seek to the first of each."""
        from kafka import TopicPartition

        first: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic, message.partition)
            first[key] = min(first.get(key, message.offset), message.offset)
        assigned = self.consumer.assignment()
        for (topic, partition), offset in first.items():
            position = TopicPartition(topic, partition)
            if position in assigned:
                self.consumer.seek(position, offset)

    def commit(self, offsets: dict[tuple[str, int], int], timeout_s: float | None = None) -> None:
        """Commit synchronously; with `timeout_s`, give up after it (KafkaTimeoutError)."""
        from kafka import OffsetAndMetadata, TopicPartition

        if not offsets:
            return
        request = {TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                   for (topic, partition), offset in offsets.items()}
        if self._in_rebalance:
            self.consumer.commit_async(request, callback=_commit_sent)
            return
        self.consumer.commit(request, timeout_ms=None if timeout_s is None else int(timeout_s * 1000))

    def lag(self) -> int | None:
        """Messages between this process's positions and the end of its partitions (checked <= 1/s)."""
        now = time.monotonic()
        if now - self._lag_checked_at < 1.0:
            return self._lag
        self._lag_checked_at = now
        try:
            total = 0
            for partition in self.consumer.assignment():
                highwater = self.consumer.highwater(partition)
                if highwater is None:
                    continue
                total += max(0, highwater - self.consumer.position(partition, timeout_ms=1000))
            self._lag = total
        except Exception as error:  # noqa: BLE001 - a metric must never stop consumption
            log.debug("consumer lag unavailable: %s", error)
        return self._lag

    def close(self, timeout_s: float | None = None) -> None:
        """Leave the group and close; with `timeout_s`, no longer than that."""
        self.consumer.close(autocommit=False, timeout_ms=None if timeout_s is None else int(timeout_s * 1000))


def _commit_sent(offsets: Any, response: Any) -> None:
    if isinstance(response, BaseException):
        log.warning("could not commit offsets %s while giving up the partitions: %s; they will be consumed "
                    "again and absorbed as replays", {f"{tp.topic}/{tp.partition}": meta.offset
                                                      for tp, meta in offsets.items()}, response)


def _kafka_frames(error: BaseException):
    """(function name, file) of each frame the error passed through, outermost first."""
    trace = error.__traceback__
    while trace is not None:
        code = trace.tb_frame.f_code
        yield code.co_name, code.co_filename.replace(os.sep, "/")
        trace = trace.tb_next


def _raised_parsing_records(error: BaseException) -> bool:
    """Whether kafka-python raised `error` while reading fetched records (any type: a failed
    checksum, a missing codec, a decompressor's own error), not on the network or the group.
    The fetcher parses records in PartitionRecords._unpack_records; kafka-python is pinned."""
    return any(name == "_unpack_records" and path.endswith("kafka/consumer/fetcher.py")
               for name, path in _kafka_frames(error))


def _raised_decompressing(error: BaseException) -> bool:
    """Whether the record batch itself could not be decompressed (every record in it fails alike)."""
    from kafka.errors import UnsupportedCodecError

    return isinstance(error, UnsupportedCodecError) or any(
        path.endswith("kafka/codec.py") or ("/kafka/record/" in path and name in ("_maybe_uncompress", "_decompress"))
        for name, path in _kafka_frames(error))


def _names(partitions) -> str:
    return ", ".join(sorted(f"{p.topic}/{p.partition}" for p in partitions))
