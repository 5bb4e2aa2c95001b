"""The supervisor of `ood-monitor run`: it prepares the database once, starts the scoring workers
(and, all-in-one, the scheduler) as child processes, restarts a child that dies, forwards SIGTERM
and waits a bounded grace, and serves /healthz, /readyz and /metrics for all of them (all-in-one:
with the operator web app). It scores nothing itself: every worker is a whole pipeline in its own
interpreter, so no Python thread of the supervisor's shares an interpreter lock with a Scorer.
After gunicorn's arbiter: start, watch, stop."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.service.children import EXIT_START_FAILED, available_cores, scheduler_child, scoring_worker
from monitor.service.poison import crashed_on, new_slot, poison_detail
from monitor.service.status import Retired, Status, merge_families

log = logging.getLogger(__name__)

SCORING, SCHEDULER = "scoring", "scheduler"
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # after 0, 1, 2, ... quick deaths in a row
QUICK_DEATH_S = 30.0  # a child that lived less than this and died counts towards the backoff
STOP_MARGIN_S = 2.0  # beyond [stream] shutdown_grace_s, at which a worker ends itself: its exit


GPU_WORKERS = 2  # per GPU: one scores while the other decodes and stores
# Each worker is a member of the consumer group (more workers than the topic's partitions idle) and
# holds its own copy of the model: the automatic count stops here, `workers` goes beyond it.
MAX_AUTO_CPU_WORKERS = 8


NVIDIA_DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU while the driver is loaded


def visible_gpus(settings: Any) -> list[str]:
    """The GPUs the scoring workers share, as CUDA_VISIBLE_DEVICES entries (empty on the CPU): those
    CUDA_VISIBLE_DEVICES already names, else every GPU torch sees."""
    if settings.model.device not in ("auto", "cuda"):
        return []
    if settings.model.device == "auto" and not NVIDIA_DRIVER_GPUS.is_dir():
        return []  # no NVIDIA driver: spare the supervisor importing torch to learn it
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    named = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return named[:count] if named else [str(index) for index in range(count)]


def gpu_of_worker(gpus: list[str], index: int) -> str | None:
    """Worker `index`'s GPU: the workers are dealt round the GPUs, so N GPUs with the default 2N
    workers get two each. None on the CPU, and with one GPU (nothing to choose)."""
    return gpus[index % len(gpus)] if len(gpus) > 1 else None


def auto_workers(settings: Any) -> int:
    """`[stream] workers = 0`: two workers per GPU when the model runs on GPUs (one scores while the
    other decodes and stores); on the CPU one per `[model] torch_threads` cores (one per core when
    it is not set: independent processes beat one process whose torch threads wait on each other),
    at least one and at most MAX_AUTO_CPU_WORKERS; cores as `available_cores` counts them.
    Measured: docs/daemon.md, "Scaling"."""
    gpus = visible_gpus(settings)
    if gpus:
        return GPU_WORKERS * len(gpus)
    threads = settings.model.torch_threads or 1
    return max(1, min(MAX_AUTO_CPU_WORKERS, available_cores() // threads))


@dataclass
class Child:
    role: str
    index: int
    process: Any
    connection: Any
    started_at: float = field(default_factory=time.monotonic)
    status: Status | None = None
    received_at: float | None = None
    slot: Any = None  # what a scoring worker is decoding (monitor.service.poison)

    @property
    def name(self) -> str:
        return f"{self.role} worker {self.index}" if self.role == SCORING else self.role


class Supervisor:
    """`run()` blocks until SIGTERM/SIGINT (or `request_stop()`); returns the exit status."""

    def __init__(self, settings: Any, *, workers: int, scheduler: bool, web: bool,
                 install_signal_handlers: bool = True, stall_after_s: float = 120.0):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.settings = settings
        self.gpus = visible_gpus(settings) if workers else []  # dealt to the scoring workers
        self.workers = workers
        self.with_scheduler = scheduler
        self.with_web = web
        self.install_signal_handlers = install_signal_handlers
        self.stall_after_s = stall_after_s
        self.context = multiprocessing.get_context("spawn")
        self.children: dict[tuple[str, int], Child] = {}
        self.retired = Retired()
        self.lock = threading.Lock()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.pending: dict[tuple[str, int], float] = {}  # child -> when to start it
        self.quick_deaths: dict[tuple[str, int], int] = {}
        self.poison: dict[tuple[str, int, int], str] = {}  # positions that crashed a worker's decoder
        self.store = None
        self.http = None
        self.web_app_included = False
        self.started = threading.Event()
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self._wakeup_write.setblocking(False)
        self.registry = CollectorRegistry()
        self.worker_gauge = Gauge("ood_monitor_workers", "Scoring worker processes running.", registry=self.registry)
        self.restarts = Counter("ood_monitor_worker_restarts", "Child processes started again after one died.",
                                ["role"], registry=self.registry)
        self.registry.register(_ChildrenCollector(self))
        self.probes = SupervisorProbes(self)

    # --- signals -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Safe from a signal handler or another thread: the loop does the work."""
        try:
            self._wakeup_write.send(b"s")
        except (BlockingIOError, OSError):
            pass

    def _signal(self, signum: int, _frame: Any) -> None:
        self.request_stop()

    # --- children ----------------------------------------------------------------------------------

    def _start(self, role: str, index: int) -> None:
        ours, theirs = self.context.Pipe()
        slot = None
        if role == SCORING:
            slot = new_slot(self.context)
            target, args = scoring_worker, (self.settings, theirs, index, self.workers, os.getpid(), slot,
                                            dict(self.poison), gpu_of_worker(self.gpus, index))
        else:
            target, args = scheduler_child, (self.settings, theirs, os.getpid())
        process = self.context.Process(target=target, args=args, name=f"ood-monitor-{role}-{index}")
        process.start()
        theirs.close()
        with self.lock:
            self.children[(role, index)] = Child(role, index, process, ours, slot=slot)
        log.info("started %s (pid %d)", self.children[(role, index)].name, process.pid)
        self._count_workers()

    def _count_workers(self) -> None:
        self.worker_gauge.set(sum(1 for child in self.children.values()
                                  if child.role == SCORING and child.process.is_alive()))

    def _receive(self, child: Child) -> None:
        try:
            while child.connection.poll():
                status = child.connection.recv()
                with self.lock:
                    child.status, child.received_at = status, time.monotonic()
        except (EOFError, OSError):
            child.connection.close()

    def _exited(self, child: Child) -> None:
        if not child.connection.closed:
            self._receive(child)
            child.connection.close()
        child.process.join()
        code = child.process.exitcode
        key = (child.role, child.index)
        with self.lock:
            del self.children[key]
            if child.status is not None:
                self.retired.add(child.status.families)
        self._count_workers()
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        if child.slot is not None:
            position = crashed_on(child.slot, code, self.settings.kafka.topics)
            if position is not None:
                self._poisoned(position, poison_detail(code))
        if self.stopping:
            log.info("%s stopped (%s)", child.name, how)
            return
        if code == EXIT_START_FAILED:
            log.error("%s cannot start (%s; its log says why): stopping", child.name, how)
            self.exit_code = EXIT_START_FAILED
            self._begin_stop()
            return
        lived = time.monotonic() - child.started_at
        deaths = self.quick_deaths.get(key, 0) + 1 if lived < QUICK_DEATH_S else 0
        self.quick_deaths[key] = deaths
        delay = RESTART_BACKOFF_S[min(deaths, len(RESTART_BACKOFF_S) - 1)]
        log.error("%s died (%s) after %.0f s; starting another%s", child.name, how, lived,
                  f" in {delay:g} s" if delay else "")
        self.restarts.labels(child.role).inc()
        self.pending[key] = time.monotonic() + delay

    def _poisoned(self, position: tuple[str, int, int], detail: str) -> None:
        log.error("%s/%d/%d: %s; every worker rejects it from now on", *position, detail)
        self.poison[position] = detail
        for child in list(self.children.values()):
            if child.role == SCORING and not child.connection.closed:
                try:
                    child.connection.send({position: detail})
                except (BrokenPipeError, ConnectionError, OSError):
                    pass  # that worker is dying too; its replacement gets the list at start

    def _begin_stop(self) -> None:
        if self.stopping:  # a second request: the workers abandon their batch in flight at once
            log.warning("second stop request: the workers abandon their batch in flight")
        else:
            log.info("stopping: the workers finish their batch in flight (up to %.0f s)",
                     self.settings.stream.shutdown_grace_s)
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.settings.stream.shutdown_grace_s + STOP_MARGIN_S
            self.pending.clear()
        for child in list(self.children.values()):
            if child.process.is_alive():
                os.kill(child.process.pid, signal.SIGTERM)

    def _due_starts(self) -> None:
        now = time.monotonic()
        for key, when in list(self.pending.items()):
            if when <= now:
                del self.pending[key]
                self._start(*key)

    def _first_worker_loaded(self) -> bool:
        first = self.children.get((SCORING, 0))
        return first is not None and first.status is not None and bool(first.status.details.get("model_loaded"))

    # --- the loop ----------------------------------------------------------------------------------

    def setup(self) -> "Supervisor":
        from monitor.service.database import open_store, prepare_store
        from monitor.service.http import HttpServer, build_http_app

        prepare_store(self.settings)  # once, before any worker: they never race an upgrade
        settings = self.settings
        if settings.stream.http:
            if self.with_web:
                self.store = open_store(settings, upgrade=False)
            app, self.web_app_included = build_http_app(self.probes, settings if self.with_web else None,
                                                        self.store, consumer_lag=self.probes.lag)
            self.http = HttpServer(app, settings.web.host, settings.web.port, proxy_headers=True).start()
            log.info("serving %s on http://%s:%d (/healthz /readyz /metrics)",
                     "the web app" if self.web_app_included else "the probes", settings.web.host, self.http.port)
        return self

    def run(self) -> int:
        if self.install_signal_handlers:
            signal.signal(signal.SIGTERM, self._signal)
            signal.signal(signal.SIGINT, self._signal)
        try:
            if self.http is None and self.store is None:
                self.setup()
            if self.with_scheduler:
                self._start(SCHEDULER, 0)
            # The first worker alone until its model is loaded: it calibrates 1C-Sum once and
            # registers the model; the others then find both done.
            self._start(SCORING, 0)
            waiting_for_first = self.workers > 1
            self.started.set()
            while True:
                if waiting_for_first and (self._first_worker_loaded() or (SCORING, 0) not in self.children):
                    waiting_for_first = False
                    for index in range(1, self.workers):
                        if not self.stopping:
                            self._start(SCORING, index)
                if self.stopping and not self.children:
                    break
                self._wait()
        finally:
            self.close()
        log.info("stopped")
        return self.exit_code

    def _wait(self) -> None:
        children = list(self.children.values())
        objects: list[Any] = [self._wakeup_read]
        objects += [child.connection for child in children if not child.connection.closed]
        objects += [child.process.sentinel for child in children]
        deadlines = list(self.pending.values()) + ([self.stop_deadline] if self.stop_deadline else [])
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        ready = multiprocessing.connection.wait(objects, timeout)
        if self._wakeup_read in ready:
            self._wakeup_read.recv(64)
            self._begin_stop()
        for child in children:
            if child.connection in ready and not child.connection.closed:
                self._receive(child)
        for child in children:
            if child.process.sentinel in ready or not child.process.is_alive():
                self._exited(child)
        if self.stopping and self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
            for child in self.children.values():
                if child.process.is_alive():
                    log.error("%s did not stop within the grace: killing it", child.name)
                    os.kill(child.process.pid, signal.SIGKILL)
            self.stop_deadline = None
        self._due_starts()

    def close(self) -> None:
        for child in list(self.children.values()):  # only after an error in this loop
            if child.process.is_alive():
                os.kill(child.process.pid, signal.SIGKILL)
            child.process.join()
        if self.http is not None:
            self.http.stop()
        if self.store is not None:
            self.store.close()
        self._wakeup_read.close()
        self._wakeup_write.close()


class _ChildrenCollector:
    """The children's metric families, summed (see monitor.service.status)."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    def collect(self):
        supervisor = self.supervisor
        with supervisor.lock:
            families = [child.status.families for child in supervisor.children.values() if child.status]
            return merge_families(families, supervisor.retired)


NO_PARTITIONS = "no partitions assigned by the consumer group"


class SupervisorProbes:
    """/healthz, /readyz and /metrics of all the children together."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    def _children(self) -> list[Child]:
        with self.supervisor.lock:
            return sorted(self.supervisor.children.values(), key=lambda child: (child.role, child.index))

    def live(self) -> tuple[bool, str]:
        now = time.monotonic()
        for child in self._children():
            if child.status is None:
                continue  # starting
            age = now - (child.received_at or now)
            if age > self.supervisor.stall_after_s:
                return False, f"{child.name}: no report for {age:.0f} s"
            alive, detail = child.status.live
            if not alive:
                return False, f"{child.name}: {detail}"
        return True, "stopping" if self.supervisor.stopping else "ok"

    def ready(self) -> tuple[bool, list[str]]:
        supervisor = self.supervisor
        problems = ["shutting down"] if supervisor.stopping else []
        children = {(child.role, child.index): child for child in self._children()}
        expected = [(SCORING, index) for index in range(supervisor.workers)]
        if supervisor.with_scheduler:
            expected.append((SCHEDULER, 0))
        assigned = 0
        for key in expected:
            child = children.get(key)
            name = f"{key[0]} worker {key[1]}" if key[0] == SCORING else key[0]
            if child is None:
                problems.append(f"{name}: restarting" if key in supervisor.pending else f"{name}: not started")
                continue
            if child.status is None:
                problems.append(f"{name}: starting")
                continue
            assigned += int(child.status.details.get("assigned_partitions", 0))
            problems += [f"{name}: {problem}" for problem in child.status.ready[1]
                         if problem != NO_PARTITIONS and problem != "shutting down"]
        if supervisor.workers and assigned == 0:
            problems.append(NO_PARTITIONS)
        return not problems, problems

    def details(self) -> dict[str, Any]:
        rows = []
        for child in self._children():
            status = child.status
            rows.append({"role": child.role, "index": child.index, "pid": child.process.pid,
                         "ready": bool(status and status.ready[0]),
                         "problems": list(status.ready[1]) if status else ["starting"],
                         "assigned_partitions": int(status.details.get("assigned_partitions", 0)) if status else 0})
        return {"assigned_partitions": sum(row["assigned_partitions"] for row in rows), "workers": rows}

    def lag(self) -> int | None:
        lags = [child.status.details.get("lag") for child in self._children()
                if child.role == SCORING and child.status is not None]
        known = [lag for lag in lags if lag is not None]
        return sum(known) if known else None

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.supervisor.registry)
