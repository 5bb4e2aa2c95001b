"""Driving real `ood-monitor run` daemons against real brokers and databases, for the daemon tests."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from sqlalchemy import create_engine, text

from monitor.classifiers import ASSETS_DIR
from tests.services import ROOT, free_port, wait_until

CALIBRATION_SAMPLES = 64  # a quick 1C-Sum calibration: the tests check the plumbing, not the science


def fashion_samples() -> list[tuple[str, bytes]]:
    """The bundled Fashion-MNIST sample PNGs (28x28 grey, what the demo model takes)."""
    return [(path.stem, path.read_bytes()) for path in sorted((ASSETS_DIR / "samples").glob("id-*.png"))]


def image_stream(count: int, prefix: str) -> list[tuple[str, bytes]]:
    samples = fashion_samples()
    return [(f"{prefix}-{index:05d}", samples[index % len(samples)][1]) for index in range(count)]


def _png(array: np.ndarray, mode: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def message_corpus(max_bytes: int) -> dict[str, tuple[bytes, str | None]]:
    """Name -> (value, reject reason expected, or None when it must become a score row)."""
    valid = fashion_samples()[0][1]
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.save(buffer, rng.random((28, 28), dtype=np.float32), allow_pickle=False)
    oversized = _png(rng.integers(0, 256, (120, 120), dtype=np.uint8), "L")
    assert len(oversized) > max_bytes
    return {
        "valid": (valid, None),
        "valid-npy": (buffer.getvalue(), None),
        "wrong-size": (_png(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), "RGB"), None),  # resized, grey
        "corrupt": (b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 600, dtype=np.uint8)), "corrupt"),
        "empty": (b"", "empty"),
        "truncated": (valid[: len(valid) // 2], "truncated"),
        "oversized": (oversized, "too_large"),
    }


@dataclass(frozen=True)
class MessageCase:
    """One kind of message a producer may send, and how it must end: `reason` None means one score
    row, else one reject row and one dead letter with that reason. `key` None sends no key; a case
    with `headers` needs a broker of 0.11 or later."""

    name: str
    value: bytes | None
    reason: str | None
    key: bytes | None = b""  # b"": the case's name as its key
    headers: tuple[tuple[Any, bytes], ...] = ()
    detail: str | None = None  # a text the reject's detail must contain
    stored_key: str | None = None  # the sample key stored, when not the case's name ("" for none: topic/partition/offset)

    @property
    def needs_headers(self) -> bool:
        return bool(self.headers)

    def key_bytes(self) -> bytes | None:
        return self.name.encode() if self.key == b"" else self.key


class UndecodableHeaderKey(str):
    """A header key that kafka-python's producer writes as bytes that are not UTF-8: what a client in
    another language can send, and what kafka-python's consumer cannot parse."""

    def encode(self, *args, **kwargs):
        return b"\xff\xfe"


def hostile_message_cases(max_bytes: int, max_pixels: int) -> list[MessageCase]:
    """Every kind of message of the standing suite (docs/daemon.md, "Messages"), built by real encoders."""
    from tests import hostile_images as hostile

    corpus = message_corpus(max_bytes)
    rng = np.random.default_rng(1)
    valid = corpus["valid"][0]
    limit = f"more than the limit of {max_pixels}"
    markup = b"<script>alert('key')</script><img src=x onerror=alert(1)>"
    side = 2000  # 4 megapixels: over max_pixels, under Pillow's own ceiling
    cases = [
        MessageCase("valid-png", valid, None),
        MessageCase("valid-npy", corpus["valid-npy"][0], None),
        MessageCase("wrong-size-rgb", corpus["wrong-size"][0], None),
        MessageCase("empty", b"", "empty"),
        MessageCase("null-value", None, "empty", detail="no value"),
        MessageCase("truncated", corpus["truncated"][0], "truncated"),
        MessageCase("corrupt", corpus["corrupt"][0], "corrupt"),
        MessageCase("text", b"this is a caption, not an image\n", "unknown_format"),
        MessageCase("oversized", corpus["oversized"][0], "too_large", detail=f"limit of {max_bytes}"),
        MessageCase("bomb-png", hostile.png_bomb(side, side), "too_many_pixels", detail=limit),
        MessageCase("bomb-png-past-pillow", hostile.png_bomb(20000, 20000), "too_many_pixels", detail=limit),
        MessageCase("bomb-jpeg", hostile.jpeg_bomb(side, side), "too_many_pixels", detail=limit),
        MessageCase("bomb-webp", hostile.webp_bomb(16384, 16384), "too_many_pixels", detail=limit),
        MessageCase("bomb-bmp", hostile.bmp_bomb(side, side), "too_many_pixels", detail=limit),
        MessageCase("bomb-npy", hostile.npy_bomb(side, side), "too_many_pixels", detail=limit),
        MessageCase("wrong-channels-npy", hostile.npy(rng.integers(0, 256, (28, 28, 2), dtype=np.uint8)),
                    "bad_channels"),
        MessageCase("nan-npy", hostile.npy(np.full((28, 28), np.nan, np.float32)), "non_finite"),
        MessageCase("inf-npy", hostile.npy(np.full((28, 28), np.inf, np.float32)), "non_finite"),
        MessageCase("pickled-npy", hostile.pickled_npy(), "bad_array"),
        MessageCase("16-bit-png", hostile.sixteen_bit_png(), None),
        MessageCase("cmyk-jpeg", hostile.cmyk_jpeg(), None),
        MessageCase("palette-png-transparency", hostile.palette_png_with_transparency(), None),
        MessageCase("exif-rotated-jpeg", hostile.exif_rotated_jpeg(), None),
        MessageCase("animated-gif", hostile.animated_gif(), "unknown_format"),
        MessageCase("tiff", hostile.tiff(), "unknown_format"),
        MessageCase("no-key", valid, None, key=None, stored_key=""),
        # Undecodable bytes and control characters stay visible as \xNN (docs/daemon.md, "Inbound").
        MessageCase("non-utf8-key", valid, None, key=b"\xff\xfe-camera-\x00-7", stored_key="\\xff\\xfe-camera-\\x00-7"),
        MessageCase("markup-key", valid, None, key=markup, stored_key=markup.decode()),
        # Over 255 characters: its start, then an ellipsis and 16 hex digits of the key's sha256.
        MessageCase("long-key", valid, None, key=b"k" * 300,
                    stored_key="k" * 238 + "\u2026" + hashlib.sha256(b"k" * 300).hexdigest()[:16]),
        # Headers exist from Kafka 0.11 on.
        MessageCase("content-type-mismatch", valid, "content_type_mismatch", headers=(("content-type", b"image/jpeg"),)),
        MessageCase("content-type-not-an-image", valid, "content_type_mismatch",
                    headers=(("content-type", b"text/html"),)),
        MessageCase("content-type-agrees", valid, None, headers=(("content-type", b"image/png"),)),
        MessageCase("non-utf8-header-key", valid, "unreadable_record", headers=((UndecodableHeaderKey("x"), b"1"),)),
    ]
    assert len({case.name for case in cases}) == len(cases)
    return cases


def daemon_config(path: Path, *, bootstrap: str, api_version: str, topic: str, group: str, store_url: str,
                  cache_dir: Path, port: int, batch_size: int = 8, extra: str = "", jobs: bool = False) -> Path:
    path.write_text(f"""
[model]
spec = "demo"
device = "cpu"
cache_dir = "{cache_dir}"
calibration_samples = {CALIBRATION_SAMPLES}

[kafka]
bootstrap_servers = ["{bootstrap}"]
topics = ["{topic}"]
group_id = "{group}"
api_version = "{api_version}"
session_timeout_ms = 6000
max_poll_records = 50
dead_letter_topic = "{topic}.dead-letter"
alerts_topic = "{topic}.alerts"

[stream]
batch_size = {batch_size}
max_batch_wait_ms = 100
decode_threads = 1
# One scoring worker unless a test asks for more (--workers): the default follows the machine's
# cores, and a test's counts (restarts, processes, metrics) should not.
workers = 1
threshold_refresh_s = 1.0
store_retry_initial_s = 0.2
store_retry_max_s = 2.0
shutdown_grace_s = 10.0

[store]
url = "{store_url}"

[web]
host = "127.0.0.1"
port = {port}

[jobs]
enabled = {"true" if jobs else "false"}
{extra}
""")
    return path


class DaemonProcess:
    """`ood-monitor run --config FILE` as a real child process, its output in a log file."""

    def __init__(self, config: Path, log: Path, port: int, *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, command: tuple[str, ...] = ("-m", "monitor.cli")):
        self.config, self.log_path, self.port = config, log, port
        self.args, self.env, self.command = tuple(args), dict(env or {}), tuple(command)
        self.process: subprocess.Popen | None = None

    @classmethod
    def configured(cls, workdir: Path, name: str, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                   command: tuple[str, ...] = ("-m", "monitor.cli"), **config) -> "DaemonProcess":
        port = free_port()
        path = daemon_config(workdir / f"{name}.toml", port=port, **config)
        return cls(path, workdir / f"{name}.log", port, args=args, env=env, command=command)

    def start(self) -> "DaemonProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.command, "run", "--config", str(self.config), *self.args], cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return self

    def readiness(self) -> dict | None:
        """The supervisor's /readyz document (its `workers` list each child), None when it does not answer."""
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def metric(self, name: str) -> float | None:
        """One sample of the supervisor's /metrics (name with its labels, as printed), None when absent."""
        import httpx

        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log_tail()}")

    def probe(self, path: str) -> int | None:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def assigned_partitions(self) -> int | None:
        """What the daemon's /metrics says it consumes (None when it does not answer)."""
        import httpx

        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("ood_monitor_assigned_partitions "):
                return int(float(line.split()[1]))
        return None

    def wait_ready(self, timeout: float = 120) -> "DaemonProcess":
        """Until /readyz says 200: model loaded, partitions assigned, database writable."""
        def ready():
            self._check_alive()
            return self.probe("/readyz") == 200

        wait_until(ready, timeout, f"daemon {self.config.stem} to be ready", interval=0.2)
        return self

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def produce(bootstrap: str, api_version, topic: str, messages: Iterable[tuple[str | None, bytes]],
            partition: int | None = None) -> list[tuple[int, int]]:
    """Send and wait for every acknowledgement; returns (partition, offset) of each message."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=api_version, acks="all", linger_ms=5,
                             max_request_size=2_000_000)
    try:
        futures = [producer.send(topic, value=value, key=key.encode() if key else None, partition=partition)
                   for key, value in messages]
        producer.flush(60)
        return [(meta.partition, meta.offset) for meta in (future.get(60) for future in futures)]
    finally:
        producer.close(10)


def consume_all(bootstrap: str, api_version, topic: str, expected: int, timeout: float = 60) -> list:
    """Read `topic` from the start (no group) until `expected` messages arrived."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=api_version, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        partitions = wait_until(lambda: consumer.partitions_for_topic(topic), timeout, f"topic {topic}")
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list = []

        def enough():
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            return len(records) >= expected

        wait_until(enough, timeout, f"{expected} messages on {topic} (got {len(records)})", interval=0)
        records.extend(record for batch in consumer.poll(timeout_ms=500).values() for record in batch)
        return records
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, api_version, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=api_version, group_id=group,
                             enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


class StoredRows:
    """What the daemon wrote, read straight from its database."""

    def __init__(self, url: str):
        self.engine = create_engine(url.replace("postgresql+psycopg", "postgresql+psycopg"), pool_pre_ping=True)

    def count(self, table: str) -> int:
        try:
            with self.engine.connect() as connection:
                return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        except Exception:  # the daemon may not have created the schema yet, or the database is down
            return -1

    def total(self) -> int:
        return self.count("samples") + self.count("rejects")

    def positions(self, topic: str) -> list[tuple[int, int]]:
        with self.engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT source_partition, source_offset FROM samples WHERE source_topic = :t "
                "UNION ALL SELECT source_partition, source_offset FROM rejects WHERE source_topic = :t"),
                {"t": topic}).all()
        return sorted((int(p), int(o)) for p, o in rows)

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).all()

    def close(self) -> None:
        self.engine.dispose()


class PacedProducer:
    """Sends messages from a background thread at `rate` per second. With `hold_after=N` it sends N,
    then waits for `release()` before the rest: a fault injected before the release falls in the
    middle of the stream by construction, however fast or slow the daemon is."""

    def __init__(self, bootstrap: str, api_version, topic: str, messages: list[tuple[str, bytes]], rate: float,
                 hold_after: int | None = None):
        import threading

        self.args = (bootstrap, api_version, topic)
        self.messages, self.rate = messages, rate
        self.hold_after = hold_after
        self.released = threading.Event()
        self.positions: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)

    def _run(self) -> None:
        import time

        from kafka import KafkaProducer

        bootstrap, api_version, topic = self.args
        producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=api_version, acks="all", linger_ms=1)
        try:
            started = time.monotonic()
            futures = []
            for index, (key, value) in enumerate(self.messages):
                if index == self.hold_after:
                    if not self.released.wait(300):
                        raise TimeoutError(f"the paced producer was held after {index} messages and never released")
                    started = time.monotonic() - index / self.rate
                pause = started + index / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the stream at `rate`, not waiting for a condition
                futures.append(producer.send(topic, value=value, key=key.encode()))
                self.sent = index + 1
            producer.flush(60)
            self.positions = [(meta.partition, meta.offset) for meta in (future.get(60) for future in futures)]
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.error = error
        finally:
            producer.close(10)

    def start(self) -> "PacedProducer":
        self.thread.start()
        return self

    def release(self) -> None:
        """Let a producer held after `hold_after` messages send the rest."""
        self.released.set()

    def join(self, timeout: float = 120) -> list[tuple[int, int]]:
        self.release()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("the paced producer did not finish")
        if self.error is not None:
            raise self.error
        return self.positions
