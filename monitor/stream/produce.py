"""`ood-monitor produce PATH... --topic T`: send image files to a topic (a test and replay tool).

Folders are walked recursively (hidden files skipped, sorted); every file is sent as it is, the key
being the file name without its extension (or none with --key-from none). On brokers that carry
headers (0.11+) a `content-type` header names the type found from the magic bytes.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm

from monitor.errors import InputError, MonitorError
from monitor.stream.messages import CONTENT_TYPE_HEADER, guess_content_type

log = logging.getLogger(__name__)


def iter_files(paths: Sequence[str | os.PathLike]) -> Iterator[Path]:
    """Files named, and the files of the folders named (recursively, sorted, hidden ones skipped)."""
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            yield path
        elif path.is_dir():
            for found in sorted(path.rglob("*")):
                relative = found.relative_to(path)
                if found.is_file() and not any(part.startswith(".") for part in relative.parts):
                    yield found
        else:
            raise InputError(f"PATH {raw}: no such file or folder")


def supports_headers(producer) -> bool:
    version = producer.config.get("api_version") or (0, 0)
    return tuple(version) >= (0, 11)


def produce_files(producer, topic: str, files: Sequence[Path], *, key_from: str = "name",
                  progress: bool = True) -> tuple[int, list[str]]:
    """Send every file; returns (messages acknowledged, failures as 'path: reason')."""
    headers_ok = supports_headers(producer)
    pending = []
    failures: list[str] = []
    for path in tqdm(files, desc=f"producing to {topic}", unit="file", disable=not progress):
        data = path.read_bytes()
        key = path.stem.encode("utf-8") if key_from == "name" else None
        headers = None
        content_type = guess_content_type(data)
        if headers_ok and content_type:
            headers = [(CONTENT_TYPE_HEADER, content_type.encode("ascii"))]
        try:
            pending.append((path, producer.send(topic, value=data, key=key, headers=headers)))
        except Exception as error:  # noqa: BLE001 - e.g. a file above the producer's request size
            failures.append(f"{path}: {error}")
    producer.flush()
    sent = 0
    for path, future in pending:
        try:
            future.get(timeout=60)
            sent += 1
        except Exception as error:  # noqa: BLE001 - report every refused file, then exit non-zero
            failures.append(f"{path}: {error}")
    return sent, failures


def run_produce(args: argparse.Namespace) -> int:
    """Entry point of `ood-monitor produce`."""
    from monitor.settings import load_settings
    from monitor.outbound.kafka import make_producer

    settings = load_settings(getattr(args, "config", None))
    kafka = settings.kafka
    if args.bootstrap_servers:
        kafka.bootstrap_servers = [s.strip() for s in args.bootstrap_servers.split(",") if s.strip()]
    if args.api_version:
        kafka.api_version = args.api_version
        try:
            kafka.api_version_tuple()
        except ValueError:
            raise InputError(f"--api-version {args.api_version!r}: expected 'auto' or a version such as 0.9") from None
    files = list(iter_files(args.paths))
    if not files:
        raise InputError(f"no files found under {', '.join(map(str, args.paths))}")
    producer = make_producer(kafka, max_request_size=max(1_048_576, settings.imaging.max_bytes + 4096))
    try:
        sent, failures = produce_files(producer, args.topic, files, key_from=args.key_from,
                                       progress=not args.no_progress)
    finally:
        producer.close(timeout=10)
    for failure in failures:
        print(f"not sent: {failure}")
    print(f"{sent} message(s) sent to {args.topic} on {', '.join(kafka.bootstrap_servers)}")
    if failures and not sent:
        raise MonitorError(f"none of the {len(files)} file(s) could be sent")
    return 1 if failures else 0
