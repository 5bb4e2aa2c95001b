"""The message codec: what a consumed message means, and the dead-letter and alert messages produced.

Inbound (any broker version): the value is the encoded image (PNG, JPEG, WebP, BMP) or a .npy array;
its type is found from magic bytes, and a `content-type` header (brokers 0.11+) may confirm it. The key
is the sample id; without a key the sample is called ``topic/partition/offset``.

Outbound messages are self-contained JSON documents (no headers needed, so they work on brokers
older than 0.11). Schemas: docs/daemon.md, "Messages".
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from monitor.clock import iso_utc, utc_now  # noqa: F401 - the steps take the clock from here
from monitor.outbound.alerts import encode_json, message_key  # noqa: F401 - part of the codec's interface
from monitor.store.records import MAX_NAME_LENGTH, SourcePosition

SCHEMA_VERSION = 1
CONTENT_TYPE_HEADER = "content-type"
DEAD_LETTER_KIND = "dead_letter"
FLAGGED_SAMPLE_KIND = "flagged_sample"
UNREADABLE = "unreadable_record"
"""Reject reason of a record the Kafka client could not parse (see KafkaSource.poll)."""
# Value, key and headers together stay under the broker's default message.max.bytes (1000012)
# once base64-encoded (x 4/3) and wrapped in the JSON envelope.
DEAD_LETTER_MAX_VALUE_BYTES = 700_000
# A key or a set of headers larger than this is left out of the dead letter (its source
# position still holds it), so that they never crowd out the value or break the broker's limit.
DEAD_LETTER_MAX_KEY_BYTES = 16_384
DEAD_LETTER_MAX_HEADER_BYTES = 65_536
_CONTROL_CHARACTERS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


@dataclass(frozen=True)
class InboundMessage:
    """One consumed message, independent of the Kafka client that fetched it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None
    received_at: datetime = field(default_factory=utc_now)
    # Set when the Kafka client could not parse the record at this position: why. Key and value
    # are then unknown (None); the record stays in the topic, and the message becomes a reject.
    unreadable: str | None = None

    @property
    def position(self) -> SourcePosition:
        return SourcePosition(self.topic, self.partition, self.offset)

    @property
    def sample_key(self) -> str:
        """The message key as text (the sample id), else 'topic/partition/offset'.

        Any key becomes a storable id: bytes that are not UTF-8 and control characters (NUL
        cannot be stored in PostgreSQL text) are escaped as \\xNN, and a key longer than the
        store's 255 characters keeps its start plus a hash of the whole key, so distinct keys
        stay distinct. The dead letter carries the original key bytes.
        """
        if not self.key:
            return f"{self.topic}/{self.partition}/{self.offset}"
        text = self.key.decode("utf-8", errors="backslashreplace").translate(_CONTROL_CHARACTERS)
        if len(text) > MAX_NAME_LENGTH:
            digest = hashlib.sha256(self.key).hexdigest()[:16]
            text = text[: MAX_NAME_LENGTH - len(digest) - 1] + "\u2026" + digest
        return text

    @property
    def content_type(self) -> str | None:
        """The `content-type` header, when the producer set one (needs a 0.11+ broker)."""
        for name, raw in self.headers:
            if name.lower() == CONTENT_TYPE_HEADER and raw:
                return raw.decode("ascii", errors="replace").strip().lower()
        return None

    @property
    def size(self) -> int:
        return len(self.value or b"")

    @property
    def produced_at(self) -> datetime | None:
        """The broker/producer timestamp (0.10+ brokers); None when the message carries none."""
        if self.timestamp_ms is None or self.timestamp_ms < 0:
            return None
        return datetime.fromtimestamp(self.timestamp_ms / 1000, timezone.utc)

    @classmethod
    def from_kafka(cls, record: Any) -> "InboundMessage":
        """From a kafka-python ConsumerRecord."""
        headers = tuple((name, value or b"") for name, value in (getattr(record, "headers", None) or ()))
        timestamp = getattr(record, "timestamp", None)
        return cls(topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
                   value=record.value, headers=headers, timestamp_ms=timestamp)


def dead_letter_document(message: InboundMessage, reason: str, detail: str, *, group_id: str,
                         rejected_at: datetime | None = None,
                         max_value_bytes: int = DEAD_LETTER_MAX_VALUE_BYTES) -> dict[str, Any]:
    """The dead-letter message for a rejected input: why, where from, and the original bytes.

    Whatever would not fit in one broker message is left out and said so: a key above
    DEAD_LETTER_MAX_KEY_BYTES (`key_truncated`), headers above DEAD_LETTER_MAX_HEADER_BYTES
    together (`headers_truncated`), and a value above what `max_value_bytes` leaves after the
    key and headers (`value_base64` null, `value_truncated` true). The sha256 still identifies
    the value, and the source position still holds everything.
    """
    value = message.value or b""
    key = message.key
    keep_key = key is None or len(key) <= DEAD_LETTER_MAX_KEY_BYTES
    header_bytes = sum(len(name.encode("utf-8", errors="replace")) + len(raw) for name, raw in message.headers)
    keep_headers = header_bytes <= DEAD_LETTER_MAX_HEADER_BYTES
    room = max_value_bytes - (len(key) if key is not None and keep_key else 0) - (header_bytes if keep_headers else 0)
    keep_value = len(value) <= room
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": DEAD_LETTER_KIND,
        "reason": reason,
        "detail": detail,
        "sample_key": message.sample_key,
        "source": {"topic": message.topic, "partition": message.partition, "offset": message.offset,
                   "timestamp_ms": message.timestamp_ms},
        "key_base64": base64.b64encode(key).decode("ascii") if key is not None and keep_key else None,
        "key_truncated": not keep_key,
        "headers": [{"key": name, "value_base64": base64.b64encode(raw).decode("ascii")}
                    for name, raw in message.headers] if keep_headers else [],
        "headers_truncated": not keep_headers,
        "size": len(value),
        "sha256": hashlib.sha256(value).hexdigest(),
        "value_base64": base64.b64encode(value).decode("ascii") if keep_value else None,
        "value_truncated": not keep_value,
        "rejected_at": iso_utc(rejected_at or utc_now()),
        "group_id": group_id,
    }


def stripped_dead_letter(document: dict[str, Any]) -> dict[str, Any]:
    """The dead letter without the original bytes: for a broker whose size limit is below ours."""
    return {**document, "value_base64": None, "value_truncated": True, "key_base64": None,
            "key_truncated": document.get("key_base64") is not None or document.get("key_truncated", False),
            "headers": [], "headers_truncated": bool(document.get("headers")) or document.get("headers_truncated", False),
            "detail": str(document.get("detail", ""))[:1000]}


def original_value(document: dict[str, Any]) -> bytes | None:
    """The original message value carried by a dead-letter document (None when it was too large)."""
    encoded = document.get("value_base64")
    return base64.b64decode(encoded) if encoded is not None else None


def flagged_sample_alert(*, sample_key: str, position: SourcePosition, score: float, indicator: str,
                         threshold: float, threshold_id: int | None, model_id: int, model_name: str,
                         predicted_class: int, sample_id: int | None, time: datetime,
                         class_name: str | None = None) -> dict[str, Any]:
    """The alert for one flagged sample (schema in docs/daemon.md)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": FLAGGED_SAMPLE_KIND,
        "sample_key": sample_key,
        "sample_id": sample_id,
        "source": {"topic": position.topic, "partition": position.partition, "offset": position.offset},
        "score": finite_or_none(score),
        "indicator": indicator,
        "threshold": finite_or_none(threshold),
        "threshold_id": threshold_id,
        "model": {"id": model_id, "name": model_name},
        "predicted_class": predicted_class,
        "predicted_class_name": class_name,
        "time": iso_utc(time),
    }


def next_offsets(positions: Iterable[SourcePosition]) -> dict[tuple[str, int], int]:
    """Offsets to commit after these positions are done: per partition, the highest offset + 1."""
    offsets: dict[tuple[str, int], int] = {}
    for topic, partition, offset in positions:
        offsets[(topic, partition)] = max(offsets.get((topic, partition), 0), offset + 1)
    return offsets


def guess_content_type(data: bytes) -> str | None:
    """The image type from magic bytes (what `produce` puts in the content-type header)."""
    signatures: Sequence[tuple[bytes, str]] = (
        (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"BM", "image/bmp"),
        (b"\x93NUMPY", "application/x-npy"), (b"GIF8", "image/gif"),
    )
    for magic, content_type in signatures:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
