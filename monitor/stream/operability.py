"""What a scoring worker reports for /healthz, /readyz and /metrics (served by monitor.service).

- /healthz: 200 while the consume loop turns (it has polled within `stall_after_s`); 503 otherwise.
  For a liveness probe: a stuck process should be restarted.
- /readyz: 200 once the model is loaded, the group has assigned partitions and the last database
  write succeeded; 503 with the reasons otherwise. For a readiness probe and load balancers.
- /metrics: Prometheus text format (see docs/daemon.md, "Metrics").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StreamMetrics:
    """The daemon's Prometheus metrics, in their own registry (one per daemon; tests make many)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter("ood_monitor_messages", "Messages consumed and stored (scored or rejected).",
                                registry=r)
        self.images = Counter("ood_monitor_images_scored", "Images scored and stored; rate() gives images/s.",
                              registry=r)
        self.flagged = Counter("ood_monitor_images_flagged", "Scored images flagged as out-of-distribution.",
                               registry=r)
        self.rejects = Counter("ood_monitor_rejects", "Messages rejected (dead-lettered), by reason.",
                               ["reason"], registry=r)
        self.replays = Counter("ood_monitor_replayed_messages",
                               "Messages consumed again after a restart or rebalance, already stored.", registry=r)
        self.store_failures = Counter("ood_monitor_store_failures", "Failed database writes (retried).",
                                      registry=r)
        self.batch_latency = Histogram("ood_monitor_batch_seconds",
                                       "Time from a batch's first message to its commit.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.score_latency = Histogram("ood_monitor_score_seconds", "Time to score one batch on the device.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ood_monitor_batch_size", "Messages per batch.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.lag = Gauge("ood_monitor_consumer_lag", "Messages behind the end of the assigned partitions.",
                         registry=r)
        self.flagged_share = Gauge("ood_monitor_flagged_share",
                                   "Share of scored images flagged, over the last 1000 images.", registry=r)
        self.threshold = Gauge("ood_monitor_threshold", "The active threshold (NaN when none).", registry=r)
        self.assigned_partitions = Gauge("ood_monitor_assigned_partitions", "Partitions this process consumes.",
                                         registry=r)
        self.device = Info("ood_monitor_device", "Where the model runs.", registry=r)
        self.last_stored = Gauge("ood_monitor_last_stored_timestamp_seconds",
                                 "When a batch was last stored and committed (Unix time).", registry=r)
        self._recent: list[tuple[int, int]] = []  # (images, flagged) per batch, about the last 1000 images

    def observe_batch(self, batch: Any, replays: int, now: float | None = None) -> None:
        images = len(batch.images)
        flagged = int(batch.flagged.sum()) if batch.flagged is not None else 0
        self.messages.inc(len(batch.items))
        self.images.inc(images)
        self.flagged.inc(flagged)
        for item in batch.rejected:
            self.rejects.labels(item.reject_reason or "corrupt").inc()
        self.replays.inc(replays)
        self.batch_size.observe(len(batch.items))
        self.batch_latency.observe((now or time.monotonic()) - batch.opened_at)
        if images:
            self.score_latency.observe(batch.score_seconds)
            self._recent.append((images, flagged))
            while sum(count for count, _ in self._recent) - self._recent[0][0] >= 1000:
                self._recent.pop(0)
            total = sum(count for count, _ in self._recent)
            self.flagged_share.set(sum(f for _, f in self._recent) / total)
        self.threshold.set(batch.policy.threshold if batch.policy else float("nan"))
        self.last_stored.set(time.time())

    def text(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class DaemonState:
    """What the probes report; the daemon updates it as it goes."""

    metrics: StreamMetrics = field(default_factory=StreamMetrics)
    model_loaded: bool = False
    assigned_partitions: int = 0
    last_poll_at: float | None = None
    last_store_ok: bool = True
    last_store_error: str | None = None
    stopping: bool = False
    stall_after_s: float = 120.0
    lag_value: int | None = None

    def lag(self) -> int | None:
        """The consumer lag last measured by the consume loop (the HTTP thread never touches the consumer)."""
        return self.lag_value

    def polled(self) -> None:
        self.last_poll_at = time.monotonic()

    def store_failed(self, error: Exception) -> None:
        self.last_store_ok = False
        # /readyz is public: the error's class only. Its text can name hosts, users and statements;
        # the retry loop logs it in full.
        self.last_store_error = type(error).__name__
        self.metrics.store_failures.inc()

    def store_ok(self) -> None:
        self.last_store_ok = True
        self.last_store_error = None

    def live(self) -> tuple[bool, str]:
        if self.last_poll_at is None:
            return True, "starting"
        idle = time.monotonic() - self.last_poll_at
        if idle > self.stall_after_s and not self.last_store_ok:
            return True, f"waiting for the database for {idle:.0f} s"  # alive, backing off on purpose
        if idle > self.stall_after_s:
            return False, f"the consume loop has not polled for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, list[str]]:
        problems = []
        if self.stopping:
            problems.append("shutting down")
        if not self.model_loaded:
            problems.append("model not loaded yet")
        if self.assigned_partitions == 0:
            problems.append("no partitions assigned by the consumer group")
        if not self.last_store_ok:
            problems.append(f"database writes failing ({self.last_store_error}; see the daemon's log)")
        return not problems, problems

    def update_gauges(self) -> None:
        lag = self.lag()
        if lag is not None:
            self.metrics.lag.set(lag)
        self.metrics.assigned_partitions.set(self.assigned_partitions)

    def metrics_text(self) -> bytes:
        self.update_gauges()
        return self.metrics.text()

    def details(self) -> dict[str, Any]:
        return {"assigned_partitions": self.assigned_partitions, "model_loaded": self.model_loaded,
                "lag": self.lag_value}
