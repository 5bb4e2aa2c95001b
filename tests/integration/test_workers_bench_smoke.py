"""The worker-processes benchmark still runs end to end and saves its figures (a small run; no timing
asserted)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks import bench_workers

pytestmark = pytest.mark.integration


def test_workers_benchmark_runs_and_saves_json_markdown_and_plot(tmp_path):
    report = bench_workers.main(["--quick", "--messages", "96", "--workers", "1,2", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "workers.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["worker_counts"] == [1, 2] and saved["formats"] == ["png", "jpeg"]
    assert saved["auto_workers"] >= 1 and saved["machine"]["cpu_cores"] >= 1
    assert len(saved["load_average_before"]) == 3 and len(saved["machine"]["load_average_1_5_15_min"]) == 3
    [subject] = saved["subjects"]
    assert subject["subject"] == "demo" and subject["partitions"] % 2 == 0
    # One round per (workers, format), every message of it stored, and a ratio over the same round's baseline.
    assert sorted((run["workers"], run["format"]) for run in subject["runs"]) == [
        (1, "jpeg"), (1, "png"), (2, "jpeg"), (2, "png")]
    for run in subject["runs"]:
        assert run["messages"] == 96 and run["seconds"] > run["produce_seconds"] > 0
        assert run["ratio"] == pytest.approx(run["messages_per_s"] / run["scorer_alone_images_per_s"])
    for row in subject["summary"]:
        low, high = row["ratio_range"]
        assert low <= row["ratio"] <= high
    text = (tmp_path / "workers.md").read_text()
    assert "end to end / Scorer alone" in text and "Load average" in text
    assert (tmp_path / "workers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workers_benchmark_refuses_bad_arguments(capsys):
    for argv, what in ((["--workers", "0"], "--workers"), (["--subjects", "vgg"], "--subjects"),
                       (["--formats", "gif"], "--formats"), (["--rounds", "0"], "--rounds")):
        with pytest.raises(SystemExit) as exited:
            bench_workers.main(argv)
        assert exited.value.code == 2
        assert what in capsys.readouterr().err
