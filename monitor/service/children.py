"""What runs inside the supervisor's child processes: a scoring worker (one whole pipeline in its
own interpreter) or the scheduler. Each dies with its supervisor (the kernel sends it SIGKILL when
the supervisor's process ends, however it ends), stops cleanly on SIGTERM from it, ignores the
terminal's Ctrl-C (the supervisor forwards it as SIGTERM) and reports its Status over a pipe."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
EXIT_START_FAILED = 2  # a configuration, model or database problem: restarting would not help
EXIT_OVERRUN = 3  # stopping outlasted [stream] shutdown_grace_s: ended there, the rest is consumed again


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when the parent ends, then check it had not already ended."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's end still stops the child at its next report
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _child_logging(settings: Any, name: str) -> None:
    from monitor.stream.daemon import configure_logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s"))
    root.addHandler(handler)
    configure_logging(settings.logging)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: the CPUs it may run on, lowered to its container's CPU limit
    (cgroup v2 `cpu.max`, "quota period", rounded up) when there is one. `os.cpu_count()` counts the
    host's cores, so a 2-CPU pod on a 64-core node would otherwise start workers for 64."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):  # no cgroup v2 limit readable: the CPUs above
        pass
    return max(1, cores)


def _torch_threads_for(settings: Any, workers: int) -> None:
    """N workers on the CPU share its cores: each takes its part unless [model] torch_threads says."""
    if settings.model.torch_threads is None and workers > 1 and settings.model.device != "cuda":
        settings.model.torch_threads = max(1, available_cores() // workers)


def use_gpu(gpu: str | None) -> None:
    """Make `gpu` (a CUDA_VISIBLE_DEVICES entry) this process's only GPU, its cuda:0, so that every
    device choice of the pipeline lands on it. Must run before torch first touches CUDA."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def scoring_worker(settings: Any, connection: Any, index: int, workers: int, parent_pid: int,
                   slot: Any = None, poison: dict | None = None, gpu: str | None = None) -> None:
    """Child entry: one scoring pipeline until SIGTERM; exit status 2 when it cannot start. `slot`
    and `poison`: see monitor.service.poison (the supervisor's news of poison arrive on `connection`);
    `gpu`: the one GPU this worker uses (None: the device as configured)."""
    use_gpu(gpu)  # first: this process has not imported torch yet
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _child_logging(settings, f"scoring-{index}")
    from monitor.errors import MonitorError
    from monitor.service.database import open_store
    from monitor.service.poison import DecodeGuard
    from monitor.service.status import StatusReporter
    from monitor.stream.daemon import Daemon

    _torch_threads_for(settings, workers)
    guard = DecodeGuard(slot, settings.kafka.topics, poison) if slot is not None else None
    daemon = Daemon(settings, install_signal_handlers=False, guard_decode=guard,
                    open_store=lambda: open_store(settings, upgrade=False), on_overrun=lambda: _exit_now(EXIT_OVERRUN))
    reporter = StatusReporter(connection, daemon.state, daemon.state.metrics.registry,
                              before=daemon.state.update_gauges)

    def report(force: bool = False) -> None:
        try:
            while guard is not None and connection.poll():
                guard.learn(connection.recv())
        except (EOFError, OSError):  # the supervisor is gone: the kernel ends this process too
            pass
        reporter(force)

    daemon.report = report
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    try:
        report(force=True)
        daemon.setup()
        report(force=True)
        code = daemon.run()
    except MonitorError as error:
        log.error("cannot start: %s", error)
        code = EXIT_START_FAILED
    except BaseException:  # noqa: BLE001 - say why, then exit non-zero: the supervisor starts another
        log.error("stopped by an error:\n%s", traceback.format_exc())
        code = 1
    reporter(force=True)
    connection.close()
    _exit_now(code)


def _exit_now(code: int) -> None:
    """No interpreter teardown: torch's and kafka's threads may still be winding down."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def scheduler_child(settings: Any, connection: Any, parent_pid: int) -> None:
    """Child entry: the scheduled jobs until SIGTERM."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _child_logging(settings, "scheduler")
    from monitor.errors import MonitorError
    from monitor.service.scheduler import SchedulerRole
    from monitor.service.status import REPORT_EVERY_S, StatusReporter

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    role = SchedulerRole(settings)
    code = 0
    try:
        role.start(upgrade=False)
        reporter = StatusReporter(connection, role.probes, role.metrics.registry)
        while not stop.is_set():
            reporter(force=True)
            stop.wait(REPORT_EVERY_S)  # the cadence of the reports; SIGTERM ends the wait at once
    except MonitorError as error:
        log.error("cannot start: %s", error)
        code = EXIT_START_FAILED
    except BaseException:  # noqa: BLE001
        log.error("stopped by an error:\n%s", traceback.format_exc())
        code = 1
    finally:
        role.stop()
    connection.close()
    os._exit(code)
