"""`ood-monitor produce` against the real brokers, and `ood-monitor demo` as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from monitor.cli import main
from tests.integration.conftest import create_topic
from tests.integration.daemon_support import consume_all, fashion_samples
from tests.services import ROOT, Kafka09Broker, free_port

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


def test_demo_streams_scores_flags_and_rejects_then_stops_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "demo", "--duration", "12", "--burst-every", "3", "--no-progress",
         "--calibration-samples", "64", "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(tmp_path / "demo"),
         "--port", str(free_port()), "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "threshold 1C-Sum >" in out and "operator pages at http://127.0.0.1:" in out
    assert " batch    1:" in out
    assert "    FLAGGED  " in out and "    REJECTED broken-" in out
    assert "scored," in out.splitlines()[-1] and "rejected (dead-lettered)" in out.splitlines()[-1]
    assert (tmp_path / "demo" / "demo.db").is_file()
