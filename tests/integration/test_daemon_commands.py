"""`ood-monitor produce` against the real brokers, and `ood-monitor demo` as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.store import QueueQuery, Store
from tests.integration.conftest import create_topic
from tests.integration.daemon_support import consume_all, fashion_samples
from tests.services import ROOT, Kafka09Broker, free_port, wait_until

pytestmark = pytest.mark.integration


def test_produce_sends_every_file_keyed_by_its_name(broker, tmp_path, capsys):
    topic = f"produce-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, 2)
    samples = fashion_samples()[:5]
    (tmp_path / "nested").mkdir()
    for index, (name, data) in enumerate(samples):
        folder = tmp_path / "nested" if index % 2 else tmp_path
        (folder / f"{name}.png").write_bytes(data)
    code = main(["produce", str(tmp_path), "--topic", topic, "--bootstrap-servers", broker.bootstrap,
                 "--api-version", broker.api_version, "--no-progress"])
    assert code == 0
    assert f"5 message(s) sent to {topic}" in capsys.readouterr().out
    api = (0, 9) if isinstance(broker, Kafka09Broker) else None
    records = consume_all(broker.bootstrap, api, topic, 5)
    assert {record.key.decode(): record.value for record in records} == dict(samples)
    if isinstance(broker, Kafka09Broker):
        assert all(not record.headers for record in records)  # 0.9 carries no headers
    else:
        assert all(dict(record.headers)["content-type"] == b"image/png" for record in records)


class _Lines:
    """The lines a child process prints, read as they come."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line.rstrip("\n"))

    def matching(self, *parts: str) -> list[str]:
        return [line for line in list(self.lines) if all(part in line for part in parts)]


def test_demo_streams_scores_flags_and_rejects_runs_the_jobs_then_stops_cleanly(tmp_path):
    """`ood-monitor demo` as a user runs it: a line per batch with its flagged and rejected messages;
    its scheduler's rate episode on the OOD bursts, re-fits that take the operators' labels and a drift
    report, each announced by a terminal line naming the page; Ctrl-C, then a closing line. The job
    cadence is shortened through the MONITOR_JOBS__* variables the demo honours; the test waits on what
    the jobs wrote and printed."""
    port = free_port()
    data_dir = tmp_path / "demo"
    env = {**os.environ, "MONITOR_JOBS__REFIT_EVERY_S": "10", "MONITOR_JOBS__RATE_EVERY_S": "4",
           "MONITOR_JOBS__RATE_WINDOW_S": "30",
           # a re-fit needs 300 samples, so the rate checks see the start-up threshold flag the bursts first
           "MONITOR_JOBS__MIN_SAMPLES": "300", "MONITOR_JOBS__REPORT_EVERY_HOURS": "0.005",
           "MONITOR_JOBS__REFERENCE_HOURS": "0.01"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "demo", "--burst-every", "3", "--no-progress",
         "--calibration-samples", "64", "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(data_dir),
         "--port", str(port), "--device", "cpu"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = _Lines(demo.stdout)
    errors = _Lines(demo.stderr)
    where = f"http://127.0.0.1:{port}/"
    store = None
    try:
        schedule = wait_until(lambda: out.matching("scheduled jobs: a re-fit every 10 s"), 180,
                              "the demo to start its scheduler")
        assert "drift report every 0.3 min" in schedule[0]
        assert out.matching("threshold 1C-Sum >") and out.matching(f"operator pages at {where}")
        wait_until(lambda: out.matching(" batch    1:"), 60, "the first batch line")
        wait_until(lambda: out.matching("    FLAGGED  ") and out.matching("    REJECTED broken-"), 60,
                   "flagged and rejected messages listed under their batch")
        opened = wait_until(lambda: out.matching("JOB rate alert ok:", "episode open"), 120,
                            "a rate episode opened on the OOD bursts")
        assert opened[0].endswith(f"| see {where}")
        refit = wait_until(lambda: out.matching("JOB re-fit ok: threshold #"), 120, "a scheduled re-fit")
        assert refit[0].endswith(f"| see {where}thresholds") and "proportion threshold" in refit[0]

        store = Store.open(f"sqlite:///{data_dir / 'demo.db'}")
        model_id = store.list_models()[0].id
        # An operator labels flagged samples OOD and unflagged ones ID (what the page's buttons store).
        flagged = store.flagged_queue(model_id, QueueQuery(per_page=5)).items
        assert flagged, "the demo flags samples"
        for item in flagged:
            store.add_label(item.id, "OOD", "demo")
        unflagged = [sample for sample in store.window_scores(model_id, "1C-Sum", last=200).sample_ids
                     if sample not in {item.id for item in flagged}][:5]
        for sample_id in unflagged:
            store.add_label(int(sample_id), "ID", "demo")

        def refit_with_labels():
            rows = store.threshold_history(model_id, "1C-Sum")
            return [row for row in rows if row.fitted_by.startswith("scheduler") and row.parameters.used_labels]

        fitted = wait_until(refit_with_labels, 120, "a scheduled re-fit using the labels")
        assert fitted[0].method == "proportion"
        wait_until(lambda: out.matching("JOB re-fit ok:", "labels: ", " OOD, ", " ID, "), 30,
                   "the re-fit's line naming the labels it used")
        reports = wait_until(lambda: [row for row in store.list_reports() if row.file_path], 120, "a drift report")
        assert Path(reports[0].file_path).is_file()
        report_line = wait_until(lambda: out.matching("JOB drift report ok: report #"), 30, "the report's line")
        assert report_line[0].endswith(f"| see {where}reports")
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0, "\n".join(errors.lines)[-3000:]
    finally:
        if store is not None:
            store.close()
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out.reader.join(10)
    assert "scored," in out.lines[-1] and "rejected (dead-lettered)" in out.lines[-1]
    assert (data_dir / "demo.db").is_file()
    # nothing was printed for the quiet rate checks: only transitions
    assert all("episode" in line for line in out.matching("JOB rate alert"))
