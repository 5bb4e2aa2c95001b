"""The scheduler role: the jobs of [jobs] (re-fit, rate alert, drift report, retention) in a process
of their own, with its probes and metrics (`ood-monitor scheduler`, and a child of `ood-monitor run`)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class JobMetrics:
    """`ood_monitor_job_runs_total{job,status}` and `ood_monitor_job_last_success_timestamp_seconds{job}`."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.runs = Counter("ood_monitor_job_runs", "Scheduled job runs made by this process, by job and outcome "
                            "(ok, skipped, failed).", ["job", "status"], registry=self.registry)
        self.last_success = Gauge("ood_monitor_job_last_success_timestamp_seconds",
                                  "When each job last ended 'ok' in this process (Unix time).", ["job"],
                                  registry=self.registry)

    def observe(self, job: str, outcome: str, detail: str = "") -> None:
        self.runs.labels(job, outcome).inc()
        if outcome == "ok":
            self.last_success.labels(job).set(time.time())


class SchedulerProbes:
    """/healthz: the scheduler is running; /readyz: and the database answers."""

    def __init__(self, handle: Any, store: Any, metrics: JobMetrics):
        self.handle, self.store, self.jobs = handle, store, metrics
        self.stopping = False

    def live(self) -> tuple[bool, str]:
        return (True, "ok") if self.handle.running or self.stopping else (False, "the scheduler is not running")

    def ready(self) -> tuple[bool, list[str]]:
        problems = []
        if self.stopping:
            problems.append("shutting down")
        elif not self.handle.running:
            problems.append("the scheduler is not running")
        problem = database_problem(self.store)
        if problem:
            problems.append(problem)
        return not problems, problems

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.jobs.registry)

    def details(self) -> dict[str, Any]:
        return {"jobs": {name: (when.isoformat() if when else None)
                         for name, when in self.handle.next_fire_times().items()}}


def database_problem(store: Any) -> str | None:
    """None when the store's database answers; else a problem for /readyz, which is public: the full
    error, which can name hosts and users, goes to the log only."""
    from monitor.errors import MonitorError

    try:
        store.check_connection()
    except MonitorError as error:
        log.warning("readiness: %s", error)
        return "database unreachable (see the log)"
    return None


class SchedulerRole:
    """The jobs, their store and their alert publisher; `start()`, then `stop()`."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.metrics = JobMetrics()
        self.store = self.publisher = self.handle = None
        self.probes: SchedulerProbes | None = None

    def start(self, *, upgrade: bool | None = None) -> "SchedulerRole":
        from monitor.jobs.scheduler import start_scheduler
        from monitor.outbound.alerts import alerts_publisher
        from monitor.service.database import open_store

        self.store = open_store(self.settings, upgrade=upgrade)
        self.publisher = alerts_publisher(self.settings)
        self.handle = start_scheduler(self.settings, self.store, self.publisher, on_run=self.metrics.observe)
        self.probes = SchedulerProbes(self.handle, self.store, self.metrics)
        return self

    def stop(self) -> None:
        if self.probes is not None:
            self.probes.stopping = True
        if self.handle is not None:
            self.handle.shutdown(wait=True)
        if self.publisher is not None:
            self.publisher.close()
        if self.store is not None:
            self.store.close()


def run_scheduler(settings: Any) -> int:
    """`ood-monitor scheduler`: the jobs and their probes until SIGTERM or SIGINT."""
    from monitor.service.http import HttpServer, build_http_app

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    role = SchedulerRole(settings).start()
    http = None
    try:
        if settings.stream.http:
            app, _ = build_http_app(role.probes)
            http = HttpServer(app, settings.web.host, settings.web.port).start()
            log.info("scheduler probes on http://%s:%d (/healthz /readyz /metrics)", settings.web.host, http.port)
        stop.wait()
    finally:
        role.stop()
        if http is not None:
            http.stop()
    return 0
