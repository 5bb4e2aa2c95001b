"""The store benchmark, tiny, so it cannot rot (the full run: python -m tests.benchmarks.bench_store)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.bench_store import main

pytestmark = pytest.mark.integration  # both backends: the real PostgreSQL too


def test_store_benchmark_measures_both_backends_and_saves_its_figures(tmp_path, capsys):
    main(["--rows", "600", "--out-dir", str(tmp_path)])

    saved = json.loads((tmp_path / "store.json").read_text())
    for backend in ("sqlite", "postgresql"):
        figures = saved["backends"][backend]
        assert figures["insert"]["rows"] == 600 and figures["insert"]["rows_per_s"] > 0
        assert figures["insert_baseline"]["rows_per_s"] > 0
        assert figures["insert_speedup"] == figures["insert"]["rows_per_s"] / figures["insert_baseline"]["rows_per_s"]
        assert (figures["insert_previous"] is None) == (backend == "sqlite")
        assert (figures["insert_server_only"] is None) == (backend == "sqlite")
        assert figures["commit_floor"]["transactions"] > 0 and figures["commit_floor"]["commit_ms_median"] > 0
        assert figures["window_read"]["rows"] == 600 and figures["window_read"]["labelled"] > 0
        assert figures["window_read"]["seconds_best"] > 0
    markdown = (tmp_path / "store.md").read_text()
    assert "| sqlite" in markdown and "| postgresql" in markdown and "Store.write / baseline" in markdown
    assert saved["backends"]["postgresql"]["insert_previous"]["rows"] == 256  # 10 % of 600, at least one batch
    assert saved["backends"]["postgresql"]["insert_server_only"]["rows"] == 256
    assert saved["backends"]["postgresql"]["insert_server_only"]["rows_per_s"] > 0
    assert "server-only ceiling" in markdown
    assert saved["machine"]["cores_shared"] is True and "load average" in markdown
    assert "| sqlite" in capsys.readouterr().out
