"""The scoring pipeline of one process: the consumer that scores every image of the configured topics.

Start-up: open the store (refusing an out-of-date schema), load the model and its 1C-Sum calibration,
register the model, connect to Kafka in the consumer group. Then consume until asked to stop. The
processes that run it, and what they serve over HTTP, are composed in monitor.service. Details:
docs/daemon.md.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# Before the store's imports: alembic logs its plugin set-up at INFO while being imported.
logging.getLogger("alembic").setLevel(logging.WARNING)

from monitor.errors import MonitorError  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from monitor.stream.operability import DaemonState  # noqa: E402
from monitor.stream.pipeline import (  # noqa: E402
    PipelineParts,
    ScorerAdapter,
    PolicySource,
    build_pipeline,
    image_decoder,
    install_default_threshold,
)
from monitor.stream.steps import Batch, BatchAbandoned, Shutdown, Step  # noqa: E402

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100
COMMIT_TIMEOUT_S = 30.0  # one commit attempt while running; at shutdown, what is left of the grace


def close_reserve(grace_s: float) -> float:
    """Of the shutdown grace, the part kept for closing the clients after the batch in flight."""
    return min(5.0, grace_s / 4)


# --- logging -------------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


JsonLogFormatter.converter = time.gmtime


def configure_logging(logging_settings: Any, verbose: bool = False) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else getattr(logging, logging_settings.level))
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        if logging_settings.format == "json":
            handler.setFormatter(JsonLogFormatter())
    # Their INFO lines are per-connection and per-migration noise.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


# --- the consume loop ----------------------------------------------------------------------------


def consume(source: Any, head: Step, shutdown: Shutdown, state: DaemonState | None = None, *,
            max_records: int | None = None, poll_timeout_ms: int = POLL_TIMEOUT_MS,
            until: Callable[[], bool] | None = None, report: Callable[[], None] | None = None) -> None:
    """Feed the pipeline until shutdown (or `until()`), then finish or abandon the batch in flight.

    The batch in flight at shutdown gets the grace period of `shutdown.request`; if it cannot be
    stored by then it is abandoned: not committed, so consumed again after restart. `report()` is
    called once per turn of the loop, on this thread (a worker tells its supervisor how it is).
    """
    waiting: collections.deque = collections.deque()  # polled, not yet taken by the pipeline
    try:
        while not shutdown.stopping.is_set() and not (until and until()):
            # A congested pipeline (the database down, a slow model) must not stop the polling:
            # without polls the group takes the partitions away (on brokers before 0.10.1 after
            # session_timeout_ms). So the partitions are paused and the polls go on; they keep
            # the membership and return nothing, except from partitions newly assigned.
            hold = bool(waiting) or head.congested()
            pause = getattr(source, "pause", None)
            if pause is not None:
                pause(hold)
            revocations = getattr(source, "revocations", 0)
            messages = source.poll(timeout_ms=poll_timeout_ms, max_records=max_records)
            if getattr(source, "revocations", 0) != revocations and waiting:
                # A rebalance during the poll: what was polled before is not taken now (its commit
                # would fail). The partitions' owner consumes it again: another member from the last
                # commit, this one from where these messages start.
                source.rewind(waiting)
                waiting.clear()
            waiting.extend(messages)
            if state is not None:
                state.polled()
                lag = getattr(source, "lag", None)
                if lag is not None:
                    state.lag_value = lag()
            head.poll()
            while waiting and not head.congested():
                head.submit(waiting.popleft())
            if report is not None:
                report()
        # Messages polled but not taken are not committed: consumed again after a restart.
        head.join()
    except BatchAbandoned as abandoned:
        log.warning("%s; the messages not stored will be consumed again", abandoned)
        head.discard()


class Daemon:
    """One scoring pipeline (consume, decode, score, judge, store, publish, commit) in this process;
    `run()` blocks until stopped."""

    def __init__(self, settings: Settings, *, observers: Sequence[Callable[[Batch], None]] = (),
                 install_signal_handlers: bool = True, progress: bool = False,
                 report: Callable[[], None] | None = None, open_store: Callable[[], Any] | None = None,
                 guard_decode: Callable[[Callable], Callable] | None = None,
                 on_overrun: Callable[[], None] | None = None):
        self.settings = settings
        self.observers = list(observers)
        self.install_signal_handlers = install_signal_handlers
        self.progress = progress
        self.shutdown = Shutdown()
        self.state = DaemonState()
        self.store = None
        self.scorer = None
        self.classifier = None
        self.model_row = None
        self.producer = None
        self.source = None
        self.alerts = None
        self.report = report
        self._open_store = open_store
        self.guard_decode = guard_decode  # wraps the decoder (a worker notes what it decodes)
        self.on_overrun = on_overrun  # called when stopping outlasts the grace (a worker process exits)
        self.stop_by: float | None = None  # monotonic time by which the process is to have stopped
        self.head: Step | None = None
        self.policies: PolicySource | None = None
        self.ready = threading.Event()

    # --- start-up ------------------------------------------------------------------------------

    def open_store(self):
        if self._open_store is not None:
            return self._open_store()
        from monitor.store import Store

        return Store.open(self.settings.store.url, upgrade_sqlite=self.settings.store.auto_upgrade_sqlite,
                          connect_timeout_s=self.settings.store.connect_timeout_s)

    def load_model(self):
        from monitor.calibration_cache import load_or_calibrate
        from monitor.classifiers import load_classifier, pick_device
        from monitor.indicators import Scorer

        model_settings = self.settings.model
        if model_settings.torch_threads is not None:
            import torch

            torch.set_num_threads(model_settings.torch_threads)  # this process only: the daemon owns it
        device = pick_device(model_settings.device)
        self.classifier = load_classifier(model_settings.spec, weights=model_settings.weights,
                                          num_classes=model_settings.num_classes,
                                          input_shape=model_settings.input_shape, mean=model_settings.mean,
                                          std=model_settings.std, device=device)
        preprocessing = self.classifier.preprocessing
        self.scorer = Scorer(self.classifier.model, mean=preprocessing.mean, std=preprocessing.std,
                             odin=model_settings.odin, input_shape=preprocessing.input_shape,
                             head=model_settings.head)
        Path(model_settings.cache_dir).mkdir(parents=True, exist_ok=True)
        load_or_calibrate(self.scorer, model_settings.cache_dir, n=model_settings.calibration_samples,
                          progress=self.progress)
        if self.settings.stream.indicator not in self.scorer.available:
            raise MonitorError(f"[stream] indicator: {self.settings.stream.indicator} is not available for "
                               f"this model (available: {', '.join(self.scorer.available)})")
        self.state.metrics.device.info({"device": str(self.scorer.device), "model": self.classifier.name,
                                        "spec": model_settings.spec})

    def setup(self) -> "Daemon":
        from monitor.imaging import ImageLimits
        from monitor.imaging_device import assemble, deferring_decoder, device_decoding
        from monitor.outbound.alerts import AlertProducer, Webhook
        from monitor.outbound.kafka import make_producer
        from monitor.stream.kafka_backend import KafkaSource, make_consumer

        settings = self.settings
        self.store = self.open_store()
        self.load_model()
        preprocessing = self.classifier.preprocessing
        self.model_row = self.store.register_model(self.classifier.name, self.scorer.fingerprint(),
                                                   preprocessing.to_dict())
        # The re-fit job needs the noise statistics to re-weight 1C-Sum from labels.
        self.store.save_calibration(self.model_row.fingerprint, self.scorer.calibration.to_dict())
        install_default_threshold(self.store, self.model_row.id, settings.stream.indicator,
                                  settings.stream.default_threshold)
        self.policies = PolicySource(self.store, self.model_row.id, settings.stream.indicator,
                                     settings.stream.threshold_refresh_s)
        self.state.model_loaded = True

        self.producer = make_producer(settings.kafka)
        alerts_settings = settings.alerts
        webhook = None
        if alerts_settings.webhook_url:
            webhook = Webhook(alerts_settings.webhook_url, retries=alerts_settings.webhook_retries,
                              timeout_s=alerts_settings.webhook_timeout_s, backoff_s=alerts_settings.webhook_backoff_s)
        self.alerts = AlertProducer(self.producer, settings.kafka.alerts_topic, webhook)

        def write(samples, rejects):
            result = self.store.write(samples=samples, rejects=rejects)
            self.state.store_ok()
            return result

        limits = ImageLimits(max_bytes=settings.imaging.max_bytes, max_pixels=settings.imaging.max_pixels)
        on_device = device_decoding(settings.imaging.device_decode, self.scorer.device)
        decode = image_decoder(preprocessing.input_shape, limits,
                               apply_exif_orientation=settings.imaging.apply_exif_orientation,
                               decoder=deferring_decoder() if on_device else None)
        shape = tuple(preprocessing.input_shape)
        device = self.scorer.device
        to_batch = (lambda pixels: assemble(pixels, shape, device, limits)) if on_device else None
        parts = PipelineParts(
            decode=self.guard_decode(decode) if self.guard_decode else decode,
            scorer=ScorerAdapter(self.scorer, to_batch), current_policy=self.policies, write=write,
            producer=self.producer, commit=lambda offsets: self.source.commit(offsets, self.time_left(COMMIT_TIMEOUT_S)),
            model_id=self.model_row.id, model_name=self.classifier.name, indicator=settings.stream.indicator,
            dead_letter_topic=settings.kafka.dead_letter_topic,
            alerts_topic=settings.kafka.alerts_topic if alerts_settings.on_flagged else None,
            group_id=settings.kafka.group_id, batch_size=settings.stream.batch_size,
            max_batch_wait_s=settings.stream.max_batch_wait_ms / 1000, decode_threads=settings.stream.decode_threads,
            keep_image_share=settings.store.keep_image_share, retry_initial_s=settings.stream.store_retry_initial_s,
            retry_max_s=settings.stream.store_retry_max_s, class_name=preprocessing.class_name,
            on_alert=self.alerts.to_webhook, on_store_failure=self.state.store_failed,
        )
        self.head = build_pipeline(parts, self.shutdown, [self._observe, *self.observers])

        def on_revoke() -> None:
            try:  # finish the batch in flight so the partitions' new owner starts after it
                self.head.join()
            except BatchAbandoned:
                self.head.discard()

        def on_assign(count: int) -> None:
            self.state.assigned_partitions = count

        self.source = KafkaSource(make_consumer(settings.kafka, max_wait_ms=min(500, settings.stream.max_batch_wait_ms)),
                                  settings.kafka.topics,
                                  on_revoke=on_revoke, on_assign=on_assign)
        return self

    def _observe(self, batch: Batch) -> None:
        result = batch.write_result
        replays = (result.samples_duplicate + result.rejects_duplicate) if result else 0
        self.state.metrics.observe_batch(batch, replays)

    # --- running ---------------------------------------------------------------------------------

    def request_stop(self, grace_s: float | None = None) -> None:
        """Stop consuming; the batch in flight has the grace less the time kept for closing the
        clients, and each wait while closing gets what is left. With `on_overrun`, a stop that outlasts
        the grace all the same (a native call that cannot be interrupted) ends there: nothing stored
        is lost, what was not committed is consumed again."""
        grace = self.settings.stream.shutdown_grace_s if grace_s is None else grace_s
        if self.shutdown.stopping.is_set():
            log.warning("second stop request: abandoning the batch in flight (it will be consumed again)")
            self.shutdown.abandon_now()
        else:
            log.info("stopping: finishing the batch in flight (up to %.0f s)", grace)
            self.stop_by = time.monotonic() + grace
            self.shutdown.request(grace - close_reserve(grace))
            if self.on_overrun is not None:
                watchdog = threading.Timer(grace, self._overrun)
                watchdog.daemon = True
                watchdog.start()
        self.state.stopping = True

    def _overrun(self) -> None:
        log.error("not stopped within the grace of %.0f s: exiting now; what was not committed will be "
                  "consumed again", self.settings.stream.shutdown_grace_s)
        self.on_overrun()

    def time_left(self, default: float) -> float:
        """Seconds a wait may take: `default` while running, what is left of the grace when stopping."""
        if self.stop_by is None:
            return default
        return max(0.1, min(default, self.stop_by - time.monotonic()))

    def _signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.request_stop()

    def run(self) -> int:
        if self.install_signal_handlers:
            signal.signal(signal.SIGTERM, self._signal)
            signal.signal(signal.SIGINT, self._signal)
        try:
            if self.head is None:
                self.setup()
            self.ready.set()
            log.info("consuming %s as group %s (model %s on %s, batch %d, indicator %s)",
                     ", ".join(self.settings.kafka.topics), self.settings.kafka.group_id, self.classifier.name,
                     self.scorer.device, self.settings.stream.batch_size, self.settings.stream.indicator)
            consume(self.source, self.head, self.shutdown, self.state,
                    max_records=self.settings.kafka.max_poll_records,
                    poll_timeout_ms=min(POLL_TIMEOUT_MS, max(10, self.settings.stream.max_batch_wait_ms)),
                    report=self.report)
        finally:
            self.close()
        log.info("stopped")
        return 0

    def close(self) -> None:
        self.shutdown.abandon_now()  # a retry still waiting on the worker thread gives up: nothing is committed
        for name, action in (
            ("pipeline", lambda: self.head and self.head.close()),
            ("consumer", lambda: self.source and self.source.close(self.time_left(10.0))),
            ("alerts", lambda: self.alerts and self.alerts.close(self.time_left(5.0))),
            ("producer", lambda: self.producer and self.producer.close(timeout=self.time_left(10.0))),
            ("store", lambda: self.store and self.store.close()),
            ("scorer", lambda: self.scorer and self.scorer.close()),
        ):
            try:
                action()
            except Exception as error:  # noqa: BLE001 - close everything even if one part fails
                log.warning("closing the %s failed: %s", name, error)
        self.head = self.source = self.alerts = self.producer = None
        self.store = None
