"""The interpreter-lock benchmark still runs end to end (one short round; figures not judged)."""

from __future__ import annotations

import json

from tests.benchmarks import bench_contention


def test_the_benchmark_measures_every_condition_with_the_decoder_running_and_saves_its_figures(tmp_path):
    result = bench_contention.main(["--quick", "--rounds", "1", "--out-dir", str(tmp_path)], printer=lambda _: None)
    saved = json.loads((tmp_path / "contention.json").read_text())
    assert saved["conditions"] == json.loads(json.dumps(result["conditions"]))
    rows = {row["condition"]: row for row in result["conditions"]}
    assert len(rows) == 8 and rows["alone"]["slowdown"] == 1.0 and rows["alone"]["background_per_s"] is None
    for name, row in rows.items():
        assert row["ms_per_image"] > 0 and len(row["runs_ms_per_image"]) == 1, name
        if name != "alone":  # the background loop really ran beside the Scorer, in a thread or a process
            assert row["background_per_s"] > 0, name
    assert {row["switch_interval_ms"] for row in rows.values()} == {5.0, 1.0, 0.2}
    text = (tmp_path / "contention.md").read_text()
    assert "beside a decoding process" in text and "beside a pure-Python thread" in text and "Scorer ms/image" in text
