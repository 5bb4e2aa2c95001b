"""The roles as their own processes, on real brokers and databases: the database prepared once, two
replicas of the all-in-one `ood-monitor run` with the shipped config (web in the supervisor, scheduler
and worker in processes of their own), and the production shape (`db upgrade`, then `run --role
scoring`, `web` and `scheduler`), each with its probes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import httpx
import pytest

from tests.integration.conftest import create_topic
from tests.integration.daemon_support import DaemonProcess, StoredRows, image_stream, produce
from tests.integration.store_race import open_fresh_store
from tests.services import ROOT, free_port, postgres_database, wait_until

pytestmark = pytest.mark.integration


def test_processes_opening_one_fresh_sqlite_file_together_all_start(tmp_path):
    # Two `ood-monitor run` on a fresh file used to both create the schema, and one failed with
    # "table alembic_version already exists": the upgrade is taken in turns.
    from monitor.store import connect
    from monitor.store.migrate import current_revision, head_revision

    context = multiprocessing.get_context("spawn")
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    count = 4
    barrier, results = context.Barrier(count), context.Queue()
    processes = [context.Process(target=open_fresh_store, args=(url, barrier, results)) for _ in range(count)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=180) for _ in processes]
    for process in processes:
        process.join(30)
    assert outcomes == ["ok"] * count
    engine = connect(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def _children_of(pid: int) -> set[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return {int(child) for child in open(path).read().split()} if os.path.exists(path) else set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read() if os.path.exists(f"/proc/{pid}/stat") else ""
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _metric(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _role(command: list[str], config, port: int, log_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(PYTHONUNBUFFERED="1", MONITOR_WEB__PORT=str(port))
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "monitor.cli", *command, "--config", str(config)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def test_production_roles_each_serve_their_probes_after_one_db_upgrade(tansu, tmp_path, model_cache):
    topic = f"prod-{uuid.uuid4().hex[:8]}"
    create_topic(tansu, topic, 2)
    with postgres_database("roles") as store_url:
        config = DaemonProcess.configured(
            tmp_path, "roles", bootstrap=tansu.bootstrap, api_version="auto", topic=topic, group=f"g-{topic}",
            store_url=store_url, cache_dir=model_cache,
            extra="refit_every_s = 0\nrate_every_s = 0\nreport_every_hours = 0.0\nretention_every_s = 1\n").config
        upgrade = subprocess.run([sys.executable, "-m", "monitor.cli", "db", "upgrade", "--url", store_url],
                                 cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert upgrade.returncode == 0, upgrade.stderr
        ports = {name: free_port() for name in ("scoring", "web", "scheduler")}
        commands = {"scoring": ["run", "--role", "scoring"], "web": ["web"], "scheduler": ["scheduler"]}
        processes = {name: _role(commands[name], config, ports[name], tmp_path / f"{name}.log") for name in commands}
        rows = StoredRows(store_url)
        try:
            def answers(name: str, path: str) -> int | None:
                assert processes[name].poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                try:
                    return httpx.get(f"http://127.0.0.1:{ports[name]}{path}", timeout=2).status_code
                except httpx.HTTPError:
                    return None

            for name in processes:
                wait_until(lambda: answers(name, "/readyz") == 200, 180, f"the {name} role ready")
                assert answers(name, "/healthz") == 200 and answers(name, "/metrics") == 200
            assert answers("web", "/login") == 200
            assert answers("scoring", "/login") == 404  # --role scoring serves the probes only
            produce(tansu.bootstrap, None, topic, image_stream(20, "prod"))
            wait_until(lambda: rows.total() == 20, 120, "20 rows stored")
            scheduler_metrics = wait_until(
                lambda: "ood_monitor_job_runs_total{job=\"retention\",status=\"ok\"}" in (
                    text := httpx.get(f"http://127.0.0.1:{ports['scheduler']}/metrics").text) and text,
                30, "a retention run counted by the scheduler")
            assert "ood_monitor_images_scored_total" not in scheduler_metrics
            # The workers report to their supervisor twice a second: the sum catches up with the store.
            wait_until(lambda: _metric(httpx.get(f"http://127.0.0.1:{ports['scoring']}/metrics").text,
                                       "ood_monitor_images_scored_total") == 20, 10, "20 images in /metrics")
            for name, process in processes.items():
                process.send_signal(signal.SIGTERM)
            for name, process in processes.items():
                assert process.wait(60) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
            rows.close()


def test_two_default_run_replicas_share_the_work_and_each_fire_time_of_a_job_runs_once(tansu, tmp_path, model_cache):
    """`ood-monitor run --config config/monitor.toml` as shipped, twice on one PostgreSQL database. Each
    replica serves the web app in its supervisor and runs the scheduler and a scoring worker as processes
    of their own; the replicas split the partitions, their schedulers share each job's lock, and when one
    replica stops (its children with it) the other carries on with the messages and the jobs.

    The environment replaces only what differs on a test machine (broker, topic, database, ports, the
    model's cache and device, one worker per replica on two cores) and brings the rate check from every
    60 s down to every 3 s, so that the test sees several fire times."""
    from monitor.jobs.scheduler import latest_fire_time
    from monitor.store import Store, connect, upgrade

    every_s = 3
    topic = f"replicas-{uuid.uuid4().hex[:8]}"
    create_topic(tansu, topic, 2)
    with postgres_database("runreplicas") as url:
        engine = connect(url)
        upgrade(engine)  # `ood-monitor db upgrade`: PostgreSQL is never upgraded by the replicas
        store = Store(engine)
        common = {
            "MONITOR_KAFKA__BOOTSTRAP_SERVERS": tansu.bootstrap, "MONITOR_KAFKA__TOPICS": topic,
            "MONITOR_KAFKA__GROUP_ID": f"g-{topic}", "MONITOR_KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dead-letter",
            "MONITOR_KAFKA__ALERTS_TOPIC": f"{topic}.alerts", "MONITOR_STORE__URL": url,
            "MONITOR_MODEL__CACHE_DIR": str(model_cache), "MONITOR_MODEL__CALIBRATION_SAMPLES": "64",
            "MONITOR_MODEL__DEVICE": "cpu", "MONITOR_STREAM__WORKERS": "1",
            "MONITOR_JOBS__RATE_EVERY_S": str(every_s), "MONITOR_JOBS__REPORT_DIR": str(tmp_path / "reports"),
        }
        replicas = []
        for index in range(2):
            port = free_port()
            replicas.append(DaemonProcess(ROOT / "config" / "monitor.toml", tmp_path / f"replica-{index}.log", port,
                                          env={**common, "MONITOR_WEB__PORT": str(port)}))
        rows = StoredRows(url)
        try:
            for replica in replicas:
                replica.start()
            for replica in replicas:
                replica.wait_ready(240)
            schedulers, children = {}, {}
            for replica in replicas:
                workers = {(row["role"], row["index"]): row["pid"] for row in replica.readiness()["workers"]}
                assert set(workers) == {("scoring", 0), ("scheduler", 0)}, "the shipped config runs the jobs"
                supervisor = replica.process.pid
                # Web in the supervisor, which scores nothing; the scheduler and the worker: processes of their own.
                assert len({supervisor, *workers.values()}) == 3
                assert _children_of(supervisor) >= set(workers.values())
                assert httpx.get(f"http://127.0.0.1:{replica.port}/login").status_code == 200  # the operator app
                schedulers[replica] = f"{socket.gethostname()}:{workers[('scheduler', 0)]}"
                children[replica] = set(workers.values())

            produce(tansu.bootstrap, None, topic, image_stream(60, "replicas"))
            wait_until(lambda: rows.total() == 60, 120, "60 rows stored by the two replicas")
            wait_until(lambda: sum(replica.metric("ood_monitor_images_scored_total") or 0 for replica in replicas)
                       == 60, 60, "the 60 images in the replicas' /metrics")
            assert all(replica.metric("ood_monitor_workers") == 1 for replica in replicas)

            def runs():
                return [run for run in store.list_job_runs(job="rate_alert", limit=500) if run.outcome == "ok"]

            wait_until(lambda: len(runs()) >= 4, 60, "four rate checks")
            assert {run.runner for run in runs()} <= set(schedulers.values())
            leader = next(replica for replica, runner in schedulers.items() if runner == runs()[0].runner)
            survivor = next(replica for replica in replicas if replica is not leader)

            job_runs = 'ood_monitor_job_runs_total{job="rate_alert",status="ok"}'
            wait_until(lambda: (leader.metric(job_runs) or 0) >= 1, 10, "the leader's rate checks in its /metrics")
            assert leader.metric('ood_monitor_job_last_success_timestamp_seconds{job="rate_alert"}') > 0
            leader.signal(signal.SIGTERM)
            assert leader.wait_exit(60) == 0, leader.log_tail()
            assert not any(_alive(pid) for pid in children[leader]), "a child outlived its supervisor"
            stopped_at = datetime.now(timezone.utc)

            def runs_after_stop():
                return [run for run in runs() if run.started_at > stopped_at]

            wait_until(lambda: len(runs_after_stop()) >= 2, 60, "two rate checks by the remaining replica")
            assert {run.runner for run in runs_after_stop()} == {schedulers[survivor]}
            produce(tansu.bootstrap, None, topic, image_stream(20, "after-stop"))
            wait_until(lambda: rows.total() == 80, 120, "the remaining replica scoring both partitions")

            wait_until(lambda: (survivor.metric(job_runs) or 0) >= 2, 10, "the survivor's rate checks in its /metrics")
            survivor.signal(signal.SIGTERM)
            assert survivor.wait_exit(60) == 0, survivor.log_tail()
            assert not any(_alive(pid) for pid in children[survivor]), "a child outlived its supervisor"
            every_run = store.list_job_runs(job="rate_alert", limit=500)
            assert all(run.outcome == "ok" for run in every_run), [run.error for run in every_run]
            slots = [latest_fire_time(run.started_at, every_s) for run in every_run]
            assert len(slots) == len(set(slots)), "each fire time ran once across both replicas"
            positions = rows.positions(topic)
            assert len(positions) == len(set(positions)) == 80, "every message stored once"
        finally:
            for replica in replicas:
                replica.kill()
            rows.close()
            engine.dispose()
