"""The web benchmark's smoke run, so `python -m tests.benchmarks.bench_web` cannot rot."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks import bench_web

pytestmark = pytest.mark.integration


def test_the_web_benchmark_times_every_page_and_saves_its_figures(tmp_path):
    code = bench_web.main(["--samples", "1500", "--flagged", "150", "--repeats", "2", "--out-dir", str(tmp_path),
                           "--no-progress"])
    report = json.loads((tmp_path / "web.json").read_text())
    assert report["samples"] == 1500 and report["flagged"] == 150
    names = set(report["results"])
    assert {"queue (newest first)", "overview (24 h)", "baseline: /api/me (no database)",
            "baseline: Store.flagged_queue (no HTTP)"} <= names
    assert all(figures["median_ms"] > 0 for figures in report["results"].values())
    assert code == (0 if report["goal_met"] else 1)
    assert "| queue (newest first) |" in (tmp_path / "web.md").read_text()
