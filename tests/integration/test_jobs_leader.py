"""One replica at a time per job: real processes, real PostgreSQL, SIGKILL for crashes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from monitor.store.locks import job_lock
from monitor.jobs.scheduler import SCHEDULE_ANCHOR
from tests.services import ROOT, TansuBroker, free_port, postgres_database, wait_until

pytestmark = pytest.mark.integration

HOLDER = """
import sys
from monitor.store.locks import job_lock
from monitor.store import connect
with job_lock(connect(sys.argv[1]), "refit") as held:
    print("held" if held else "refused", flush=True)
    sys.stdin.read()  # keep the lock until killed
"""


def _spawn_holder(url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, url], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_job_lock_held_by_a_killed_process_is_released(backend, tmp_path):
    from contextlib import ExitStack

    from monitor.store import connect, upgrade

    with ExitStack() as cleanup:
        url = (cleanup.enter_context(postgres_database("jobslock")) if backend == "postgresql"
               else f"sqlite:///{tmp_path / 'monitor.db'}")
        engine = connect(url)
        cleanup.callback(engine.dispose)
        upgrade(engine)
        holder = _spawn_holder(url)
        cleanup.callback(lambda: holder.poll() is None and holder.kill())
        assert holder.stdout.readline().strip() == "held"

        with job_lock(engine, "refit") as held:
            assert not held, "a second process must not get the lock while the first holds it"
        with job_lock(engine, "retention") as held:
            assert held, "locks are per job"

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)

        def acquired() -> bool:
            with job_lock(engine, "refit") as held:
                return held

        wait_until(acquired, 15, "the lock of the killed process to be released")


RUN_LINE = re.compile(r"job retention: run #(\d+) started by \S+:(\d+)")
INTERVAL_S = 2


def _runs_by_pid(logs: list[Path]) -> dict[int, int]:
    """run id -> pid of the scheduler that ran it, from the schedulers' logs."""
    owners: dict[int, int] = {}
    for log in logs:
        for match in RUN_LINE.finditer(log.read_text() if log.exists() else ""):
            owners[int(match.group(1))] = int(match.group(2))
    return owners


def _fire_slot(moment: datetime) -> int:
    return int((moment - SCHEDULE_ANCHOR).total_seconds() // INTERVAL_S)


def test_two_schedulers_run_each_job_once_and_the_survivor_takes_over(tmp_path):
    from monitor.store import Store, connect, upgrade

    broker = TansuBroker().start()
    processes: list[subprocess.Popen] = []
    try:
        with postgres_database("jobsleader") as url:
            engine = connect(url)
            upgrade(engine)
            store = Store(engine)
            config = tmp_path / "monitor.toml"
            config.write_text(
                f'[store]\nurl = "{url}"\n[kafka]\nbootstrap_servers = ["{broker.bootstrap}"]\n'
                f"[jobs]\nrefit_every_s = 0\nrate_every_s = 0\nreport_every_hours = 0.0\n"
                f"retention_every_s = {INTERVAL_S}\n"
            )
            logs = [tmp_path / f"scheduler-{index}.log" for index in range(2)]
            for log in logs:
                with open(log, "w") as output:
                    processes.append(subprocess.Popen(
                        [sys.executable, "-m", "monitor.cli", "scheduler", "--config", str(config)],
                        cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        # each scheduler serves its probes on a port of its own
                        env={**os.environ, "PYTHONUNBUFFERED": "1", "MONITOR_WEB__PORT": str(free_port())}))

            def ok_runs():
                return [run for run in store.list_job_runs(job="retention", limit=500) if run.outcome == "ok"]

            wait_until(lambda: len(ok_runs()) >= 3, 60, "three retention runs")
            latest = ok_runs()[0]
            owners = wait_until(lambda: latest.id in _runs_by_pid(logs) and _runs_by_pid(logs), 10,
                                "the run's owner in the logs")
            leader_pid = owners[latest.id]
            leader = next(process for process in processes if process.pid == leader_pid)
            survivor = next(process for process in processes if process.pid != leader_pid)

            leader.send_signal(signal.SIGKILL)
            leader.wait(timeout=10)
            killed_at = datetime.now(timezone.utc)

            def runs_after_kill():
                return [run for run in ok_runs() if run.started_at > killed_at]

            wait_until(lambda: len(runs_after_kill()) >= 2, 30, "two runs by the surviving scheduler")
            owners = wait_until(lambda: all(run.id in _runs_by_pid(logs) for run in runs_after_kill())
                                and _runs_by_pid(logs), 10, "owners of the later runs")
            assert {owners[run.id] for run in runs_after_kill()} == {survivor.pid}
            # The runs name their process ("host:pid"), as the logs do.
            assert {run.runner for run in runs_after_kill()} == {f"{socket.gethostname()}:{survivor.pid}"}
            assert latest.runner == f"{socket.gethostname()}:{leader_pid}"

            runs = store.list_job_runs(job="retention", limit=500)
            slots = [_fire_slot(run.started_at) for run in runs]
            assert len(slots) == len(set(slots)), "each fire time ran once across both schedulers"
            assert all(run.outcome == "ok" for run in runs)

            survivor.send_signal(signal.SIGTERM)
            assert survivor.wait(timeout=30) == 0, "SIGTERM shuts the scheduler down cleanly"
            engine.dispose()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        broker.stop()
