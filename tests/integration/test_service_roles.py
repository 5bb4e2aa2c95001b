"""The roles as their own processes, on real brokers and databases: the database prepared once, the
all-in-one `ood-monitor run` with web and scheduler in processes of their own, and the production
shape (`db upgrade`, then `run --role scoring`, `web` and `scheduler`), each with its probes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import uuid

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


def test_all_in_one_run_serves_the_web_app_and_runs_scheduler_and_workers_as_processes(tansu, tmp_path, model_cache):
    topic = f"roles-{uuid.uuid4().hex[:8]}"
    create_topic(tansu, topic, 2)
    store_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    daemon = DaemonProcess.configured(
        tmp_path, "all-in-one", bootstrap=tansu.bootstrap, api_version="auto", topic=topic, group=f"g-{topic}",
        store_url=store_url, cache_dir=model_cache,
        jobs=True, extra="refit_every_s = 0\nrate_every_s = 0\nreport_every_hours = 0.0\nretention_every_s = 1\n")
    daemon.start()
    rows = StoredRows(store_url)
    try:
        daemon.wait_ready()
        base = f"http://127.0.0.1:{daemon.port}"
        readiness = httpx.get(f"{base}/readyz").json()
        roles = {(row["role"], row["index"]): row["pid"] for row in readiness["workers"]}
        assert set(roles) == {("scoring", 0), ("scheduler", 0)}
        supervisor = daemon.process.pid
        # Web in the supervisor, which scores nothing; the scheduler and the worker: processes of their own.
        assert len({supervisor, *roles.values()}) == 3
        assert _children_of(supervisor) >= set(roles.values())
        assert httpx.get(f"{base}/login").status_code == 200  # the operator app
        produce(tansu.bootstrap, None, topic, image_stream(40, "roles"))
        wait_until(lambda: rows.total() == 40, 120, "40 rows stored")

        def job_and_images_counted():
            text = httpx.get(f"{base}/metrics").text
            return (_metric(text, 'ood_monitor_job_runs_total{job="retention",status="ok"}') or 0) >= 1 and \
                _metric(text, "ood_monitor_images_scored_total") == 40 and text
        metrics = wait_until(job_and_images_counted, 60, "a retention run and 40 images in /metrics")
        assert _metric(metrics, "ood_monitor_workers") == 1
        assert _metric(metrics, 'ood_monitor_job_last_success_timestamp_seconds{job="retention"}') > 0
        assert _metric(metrics, "ood_monitor_last_stored_timestamp_seconds") > 0

        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(60) == 0
        assert not any(_alive(pid) for pid in roles.values()), "a child outlived its supervisor"
    finally:
        daemon.kill()
        rows.close()


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
