"""Smoke run of the thresholds benchmark on tiny inputs, so it cannot rot."""

from __future__ import annotations

import json

from tests.benchmarks import bench_thresholds


def test_benchmark_runs_and_saves_its_figures(tmp_path, capsys):
    assert bench_thresholds.main(["--sizes", "500", "3000", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "thresholds.json").read_text())
    assert report["machine"]["cpus_usable"] >= 1 and report["machine"]["numpy"]
    assert [row["n"] for row in report["results"]] == [500, 3000]
    for row in report["results"]:
        assert row["sort_s"] > 0 and row["two_means_s"] > 0 and row["kmeans_s"] > 0
        # Exact: no KMeans run can find a split with a lower within-group sum of squares.
        assert row["two_means_within_ss"] <= row["kmeans_within_ss"] * (1 + 1e-9)
        assert row["kmeans_within_ss_excess"] >= -1e-9
        assert 0 < row["two_means_n_flagged"] < row["n"]
    markdown = (tmp_path / "thresholds.md").read_text()
    assert "| 3,000 |" in markdown and "same split" in markdown
    assert "saved" in capsys.readouterr().out
