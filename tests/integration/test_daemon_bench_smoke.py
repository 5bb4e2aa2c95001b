"""The pipeline benchmark still runs end to end and saves its figures (a small run; no timing asserted)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks import bench_pipeline

pytestmark = pytest.mark.integration


def test_pipeline_benchmark_runs_and_saves_json_and_markdown(tmp_path):
    [result] = bench_pipeline.main(["--quick", "--messages", "128", "--rounds", "2", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "pipeline.json").read_text())
    assert saved["runs"][0]["end_to_end"]["messages"] == 128
    for section in ("scorer_alone", "end_to_end", "latency"):
        assert section in result
    assert result["scorer_alone"]["images"] == 128
    assert result["latency"]["p50_ms"] <= result["latency"]["p99_ms"]
    # Two rounds, each on a topic and a daemon of its own; the reported overhead is one of theirs.
    assert [len(result["rounds"]), *(round_["end_to_end"]["messages"] for round_ in result["rounds"])] == [2, 128, 128]
    low, high = result["overhead_range"]
    assert low <= result["pipeline_overhead"] <= high
    assert result["pipeline_overhead"] in [round_["overhead"] for round_ in result["rounds"]]
    cpu = result["end_to_end"]["process_cpu_ms_per_message"]
    assert cpu is not None and cpu > 0
    text = (tmp_path / "pipeline.md").read_text()
    assert "Scorer alone ms/image" in text and "p99 ms" in text and "daemon CPU ms/message" in text
