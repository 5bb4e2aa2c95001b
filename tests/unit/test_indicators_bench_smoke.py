"""The indicator benchmark still runs end to end (tiny configuration; figures not judged)."""

from __future__ import annotations

import json

from tests.benchmarks.bench_indicators import Config, run


def test_the_benchmark_measures_all_three_variants_and_saves_json_and_markdown(tmp_path):
    report = run([Config("resnet18", 32, 2, repeats=2, warmup=1)], tmp_path, progress=False,
                 command="smoke")
    saved = json.loads((tmp_path / "indicators.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    (row,) = saved["results"]
    for key in ("bare_images_per_s", "scorer_images_per_s", "scorer_odin_images_per_s"):
        assert row[key] > 0, key
    assert all(len(values) == 2 for values in row["seconds"].values())
    assert all(len(values) == 2 for values in row["cpu_seconds"].values())
    assert set(saved["goal_met"]) == {"wall", "cpu"}
    assert row["indicators"] == 19  # resnet18 without ODIN: everything but ODIN, 1C-Sum included
    assert saved["machine"]["torch"] and saved["machine"]["cpu"]
    markdown = (tmp_path / "indicators.md").read_text()
    assert "| resnet18 | 32x32 | 2 |" in markdown and "Goal, every indicator" in markdown
