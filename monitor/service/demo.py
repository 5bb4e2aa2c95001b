"""`ood-monitor demo`: the whole service on one machine, in a minute.

Starts a local Tansu broker (in memory), a fresh SQLite store under var/demo/, the bundled demo
classifier (Fashion-MNIST) and a producer thread that streams in-distribution images with bursts of
out-of-distribution ones (digits, noise, textures) and the odd broken message; then runs one scoring
pipeline in this process, serves the web app beside it (a demo's load does not need the processes of
`ood-monitor run`) and prints a live line per batch. The scheduled jobs run beside them on a short cadence
(DEMO_JOBS: a re-fit with the labels given in the page, rate alerts, drift reports), each run announced by
one line saying what happened and which page shows it; MONITOR_JOBS__* variables change that cadence.
Ctrl-C stops everything it started.
`ood-monitor demo --offline` scores the bundled samples in this process instead (no broker).
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import random
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError

log = logging.getLogger(__name__)

DEMO_TOPIC = "demo.images"
DEMO_PARTITIONS = 3
FIT_IMAGES = 400
FLAG_SHARE = 0.02  # the demo threshold flags about 2 % of in-distribution images
DEMO_PASSWORD = "demo"

# The scheduled jobs on a demo's cadence: a re-fit every 90 s on the last 3,000 samples (the threshold
# flagging the expected 2 %, steered by the labels given in the page; 1C-Sum re-weighted once 10 of each
# kind are given), the flagged share tested every 20 s against those 2 % over the last two minutes (the
# start-up threshold, fitted on in-distribution images only, also flags the OOD bursts: a rate episode
# opens, and the first re-fit on the stream closes it), a drift report every 3 minutes against the
# 6 minutes before it. Retention is off: the demo's store is emptied at each start.
DEMO_JOBS: dict[str, Any] = {
    "refit_every_s": 90, "refit_method": "proportion", "refit_window_samples": 3000, "min_samples": 100,
    "min_labels_for_weights": 10, "expected_share": FLAG_SHARE, "rate_every_s": 20, "rate_window_s": 120,
    "rate_min_samples": 50, "report_every_hours": 0.05, "reference_hours": 0.1, "retention_every_s": 0,
}
JOBS_ENV_PREFIX = "MONITOR_JOBS__"


def _png(pixels) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def demo_images(limit: int = 2000) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(in-distribution, out-of-distribution) images as (name, PNG bytes).

    In-distribution: the Fashion-MNIST test set when Debian's dataset package is installed, else the
    bundled samples. Out-of-distribution: the bundled digits, noise and textures.
    """
    from monitor.classifiers import ASSETS_DIR
    from monitor import fashion_mnist

    samples = sorted((ASSETS_DIR / "samples").glob("*.png"))
    ood = [(path.stem, path.read_bytes()) for path in samples if path.name.startswith("ood-")]
    in_distribution = [(path.stem, path.read_bytes()) for path in samples if path.name.startswith("id-")]
    if fashion_mnist.available():
        images, labels = fashion_mnist.load("test")
        names = fashion_mnist.CLASS_NAMES
        in_distribution = [(f"fmnist-test-{index:05d}-{names[int(labels[index])].split('/')[0].lower()}",
                            _png(images[index])) for index in range(min(limit, len(images)))]
    return in_distribution, ood


def broken_messages() -> list[tuple[str, bytes]]:
    """Messages that cannot be scored: they show the dead-letter path."""
    return [("broken-empty", b""), ("broken-text", b"this is not an image"),
            ("broken-truncated", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")]


class DemoProducer(threading.Thread):
    """Streams in-distribution images at `rate` per second with a burst of OOD ones every `burst_every_s`."""

    def __init__(self, producer: Any, topic: str, in_distribution, ood, *, rate: float, burst_every_s: float,
                 stop: threading.Event):
        super().__init__(name="demo-producer", daemon=True)
        self.producer, self.topic, self.stop = producer, topic, stop
        self.in_distribution, self.ood = in_distribution, ood
        self.rate, self.burst_every_s = rate, burst_every_s
        self.sent = 0
        self.error: Exception | None = None

    def send(self, name: str, value: bytes, serial: int) -> None:
        self.producer.send(self.topic, value=value, key=f"{name}#{serial}".encode())
        self.sent += 1

    def run(self) -> None:
        rng = random.Random(7)
        next_burst = time.monotonic() + self.burst_every_s / 2
        serial = itertools.count()
        try:
            for name, value in itertools.cycle(self.in_distribution):
                if self.stop.wait(1.0 / self.rate):
                    return
                self.send(name, value, next(serial))
                if time.monotonic() >= next_burst:
                    burst = rng.sample(self.ood, k=min(5, len(self.ood))) + [rng.choice(broken_messages())]
                    for ood_name, ood_value in burst:
                        self.send(ood_name, ood_value, next(serial))
                    next_burst += self.burst_every_s
                self.producer.flush()
        except Exception as error:  # noqa: BLE001 - reported by the demo, which then stops
            self.error = error
            self.stop.set()


class BatchPrinter:
    """One live line per batch; flagged samples listed under it."""

    def __init__(self, indicator: str, out=sys.stdout):
        self.indicator = indicator
        self.out = out
        self.batches = self.scored = self.flagged = self.rejected = 0
        self.lock = threading.Lock()

    def __call__(self, batch) -> None:
        with self.lock:
            self.batches += 1
            images, rejected = batch.images, batch.rejected
            flags = int(batch.flagged.sum()) if batch.flagged is not None else 0
            self.scored += len(images)
            self.flagged += flags
            self.rejected += len(rejected)
            values = batch.scores.get(self.indicator)
            top = f"max {self.indicator} {max(values):7.2f}" if values is not None and len(values) else " " * 19
            threshold = f"threshold {batch.policy.threshold:.2f}" if batch.policy else "no threshold"
            print(f"{time.strftime('%H:%M:%S')} batch {self.batches:4d}: {len(images):3d} scored "
                  f"{flags:2d} flagged {len(rejected):2d} rejected | {top} ({threshold}) | totals "
                  f"{self.scored} scored, {self.flagged} flagged, {self.rejected} rejected", file=self.out)
            for sample in batch.samples:
                if sample.flagged:
                    print(f"    FLAGGED  {sample.sample_key:<40} {self.indicator} {sample.score:7.2f}", file=self.out)
            for item in rejected:
                print(f"    REJECTED {item.message.sample_key:<40} {item.reject_reason}: "
                      f"{(item.reject_detail or '')[:60]}", file=self.out)
            self.out.flush()


class JobAnnouncer:
    """One terminal line per scheduled job run: what it did and the page that shows it.

    A rate check that opens or closes no episode prints nothing (it runs every few seconds)."""

    PAGES = {"refit": "thresholds", "rate_alert": "", "drift_report": "reports", "retention": ""}

    def __init__(self, where: str, out=sys.stdout):
        self.where, self.out = where, out
        self.lock = threading.Lock()

    def __call__(self, job: str, outcome: str, detail: str) -> None:
        if job == "rate_alert" and outcome == "ok" and "episode" not in detail:
            return
        what = {"refit": "re-fit", "rate_alert": "rate alert", "drift_report": "drift report"}.get(job, job)
        text = " ".join(detail.split()) or "no detail"
        with self.lock:
            page = f"{self.where}{self.PAGES.get(job, '')}"
            print(f"{time.strftime('%H:%M:%S')} JOB {what} {outcome}: {text} | see {page}", file=self.out, flush=True)


def fit_demo_threshold(daemon, in_distribution) -> float:
    """Fit the demo's threshold on held-out in-distribution images: about FLAG_SHARE of them above."""
    from monitor.imaging import decode_image, stack_images
    from monitor.store import ThresholdRecord
    from monitor.store.payloads import ThresholdCounts, ThresholdParameters
    from monitor.thresholds import proportion

    shape = daemon.classifier.preprocessing.input_shape
    pixels = [decode_image(value, shape) for _, value in in_distribution]
    values = []
    for start in range(0, len(pixels), 64):
        scored = daemon.scorer.score_batch(stack_images(pixels[start:start + 64]))
        values.extend(scored.indicators[daemon.settings.stream.indicator].tolist())
    value = float(proportion(values, FLAG_SHARE))
    daemon.store.add_threshold(ThresholdRecord(
        model_id=daemon.model_row.id, indicator=daemon.settings.stream.indicator, method="proportion", value=value,
        parameters=ThresholdParameters(p=FLAG_SHARE), counts=ThresholdCounts(n=len(values)), fitted_by="demo"), activate=True)
    return value


def demo_settings(bootstrap: str, data_dir: Path, port: int, cache_dir: str | None, device: str | None,
                  odin: bool, password_hash: str | None, calibration_samples: int = 2048,
                  environ: dict[str, str] | None = None):
    """The demo's settings; of `environ`, only the MONITOR_JOBS__* variables apply (the job cadence)."""
    from monitor.settings import settings_from_mapping

    web: dict[str, Any] = {"host": "127.0.0.1", "port": port, "session_secret": secrets.token_urlsafe(32)}
    if password_hash:
        web["accounts"] = [f"demo:admin:{password_hash}"]
    return settings_from_mapping({
        "model": {"spec": "demo", "device": device or "auto", "odin": odin,
                  "cache_dir": cache_dir or "var/cache", "calibration_samples": calibration_samples},
        "kafka": {"bootstrap_servers": [bootstrap], "topics": [DEMO_TOPIC], "group_id": "ood-monitor-demo",
                  "client_id": "ood-monitor-demo", "session_timeout_ms": 6000,
                  "dead_letter_topic": f"{DEMO_TOPIC}.dead-letter", "alerts_topic": "demo.alerts"},
        "stream": {"batch_size": 16, "max_batch_wait_ms": 500, "threshold_refresh_s": 5.0},
        "store": {"url": f"sqlite:///{data_dir / 'demo.db'}", "keep_image_share": 0.1},
        "web": web,
        "jobs": {**DEMO_JOBS, "enabled": True, "report_dir": str(data_dir / "reports")},
        "logging": {"level": "WARNING"},
    }, {name: value for name, value in (environ or {}).items() if name.startswith(JOBS_ENV_PREFIX)},
        source="ood-monitor demo")


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of `ood-monitor demo`."""
    if getattr(args, "offline", False):
        from monitor.offline import run_offline_demo

        return run_offline_demo(args)

    for name, level in (("", logging.WARNING), ("alembic", logging.WARNING), ("kafka", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    from monitor.jobs.scheduler import start_scheduler
    from monitor.outbound.alerts import alerts_publisher
    from monitor.outbound.kafka import make_producer
    from monitor.service.http import HttpServer, build_http_app
    from monitor.stream.daemon import Daemon
    from monitor.stream.tansu import TansuBroker, free_port, port_open

    data_dir = Path(args.data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)  # the broker starts empty, so the store must too
    data_dir.mkdir(parents=True)
    port = args.port if args.port is not None else (8080 if not port_open("127.0.0.1", 8080) else free_port())

    print("ood-monitor demo: starting a local Tansu broker ...", flush=True)
    broker = TansuBroker(log_path=data_dir / "tansu.log").start()
    stop = threading.Event()
    daemon = None
    producer = None
    http = None
    scheduler = publisher = None
    try:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="ood-monitor-demo")
        admin.create_topics([NewTopic(DEMO_TOPIC, DEMO_PARTITIONS, 1), NewTopic(f"{DEMO_TOPIC}.dead-letter", 1, 1),
                             NewTopic("demo.alerts", 1, 1)])
        admin.close()
        from monitor.web.auth import hash_secret

        password_hash = hash_secret(DEMO_PASSWORD)
        settings = demo_settings(broker.bootstrap, data_dir, port, args.cache_dir, args.device, args.odin,
                                 password_hash, args.calibration_samples, dict(os.environ))
        printer = BatchPrinter(settings.stream.indicator)
        print("ood-monitor demo: loading the demo classifier (the first run calibrates 1C-Sum on noise, "
              "about half a minute on a laptop CPU; later runs reuse it) ...", flush=True)
        daemon = Daemon(settings, observers=[printer], progress=not args.no_progress).setup()
        in_distribution, ood = demo_images()
        held_out, streamed = in_distribution[:FIT_IMAGES], in_distribution[FIT_IMAGES:] or in_distribution
        threshold = fit_demo_threshold(daemon, held_out)
        print(f"ood-monitor demo: {daemon.classifier.name} on {daemon.scorer.device}; threshold "
              f"{settings.stream.indicator} > {threshold:.2f} (flags ~{FLAG_SHARE:.0%} of {len(held_out)} held-out "
              f"Fashion-MNIST images)")
        app, web_app_included = build_http_app(daemon.state, settings, daemon.store, consumer_lag=daemon.state.lag)
        http = HttpServer(app, settings.web.host, settings.web.port).start()
        where = f"http://127.0.0.1:{http.port}/"
        if web_app_included:
            login = " (user demo, password demo)" if password_hash else ""
            print(f"ood-monitor demo: operator pages at {where}{login}; metrics at {where}metrics")
        else:
            print(f"ood-monitor demo: probes at {where}healthz and {where}metrics")
        print(f"ood-monitor demo: streaming to topic {DEMO_TOPIC} on {broker.bootstrap}: Fashion-MNIST images "
              f"at {args.rate:g}/s, a burst of out-of-distribution ones every {args.burst_every:g} s. "
              "Ctrl-C stops.\n", flush=True)
        jobs = settings.jobs
        publisher = alerts_publisher(settings)
        scheduler = start_scheduler(settings, daemon.store, publisher, on_run=JobAnnouncer(where))
        print(f"ood-monitor demo: scheduled jobs: a re-fit every {jobs.refit_every_s} s ({jobs.refit_method}, with "
              f"the labels given in the page), the flagged share tested every {jobs.rate_every_s} s against "
              f"{jobs.expected_share:.0%}, a drift report every {jobs.report_every_hours * 60:g} min; each run "
              "prints a JOB line.", flush=True)
        producer = make_producer(settings.kafka)
        feeder = DemoProducer(producer, DEMO_TOPIC, streamed, ood, rate=args.rate, burst_every_s=args.burst_every,
                              stop=stop)
        feeder.start()
        def stop_daemon_when_asked() -> None:
            stop.wait()
            if not daemon.shutdown.stopping.is_set():
                daemon.request_stop(grace_s=5.0)

        watchers = [threading.Thread(target=stop_daemon_when_asked, daemon=True)]
        if args.duration:
            watchers.append(threading.Thread(target=lambda: stop.wait(args.duration) or stop.set(), daemon=True))
        for watcher in watchers:
            watcher.start()
        daemon.run()  # returns after Ctrl-C / SIGTERM or --duration
        stop.set()
        feeder.join(5)
        if feeder.error is not None:
            raise MonitorError(f"the demo producer failed: {feeder.error}")
        print(f"\nood-monitor demo: {feeder.sent} messages sent; {printer.scored} scored, {printer.flagged} flagged, "
              f"{printer.rejected} rejected (dead-lettered). Store kept at {data_dir / 'demo.db'}.")
        return 0
    finally:
        stop.set()
        if scheduler is not None:
            scheduler.shutdown(wait=True)  # a running job finishes with the store still open
        if publisher is not None:
            publisher.close()
        if daemon is not None and daemon.head is not None:
            daemon.close()
        if producer is not None:
            producer.close(timeout=5)
        if http is not None:
            http.stop()
        broker.stop()
