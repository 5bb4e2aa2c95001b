"""The one-run script of the GPU figures still runs its steps end to end (its --dry-run: the CPU,
tiny sizes) and leaves its log, its summary and its archive where $OUT says. No timing asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_checks_dry_run_writes_every_figure_into_out(tmp_path):
    environment = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "tests/benchmarks/gpu_checks.sh"), "--dry-run"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu-checks.log", "gpu-checks.tar.gz", "summary.md"]
    with tarfile.open(tmp_path / "gpu-checks.tar.gz") as archive:
        names = {name.lstrip("./") for name in archive.getnames()}
        assert {"scorer/scorer-overhead.json", "decode-on/workers.json", "decode-off/workers.json",
                "decode-on/workers.png"} <= names
        on = json.load(archive.extractfile("./decode-on/workers.json"))
        off = json.load(archive.extractfile("./decode-off/workers.json"))
        scorer = json.load(archive.extractfile("./scorer/scorer-overhead.json"))
    assert (on["device_decode"], off["device_decode"], off["formats"]) == ("on", "off", ["jpeg"])
    assert all(run["messages"] == 64 for subject in on["subjects"] for run in subject["runs"])
    assert [row["model"] for row in scorer["rows"]] == ["demo ResNet", "resnet18"]
    assert all(row["scorer_over_forward"] > 0 and row["scorer_odin_over_forward"] > 0 for row in scorer["rows"])
    # Numba is installed here, so the Scorer is also timed without its compiled kernels.
    assert all(row["scorer_torch_over_forward"] > 0 for row in scorer["rows"])
    summary = (tmp_path / "summary.md").read_text()
    assert "dry run on the CPU" in summary
    assert summary.count("# Worker processes") == 2 and "# The Scorer over the bare forward pass" in summary


def test_gpu_checks_without_a_working_python_still_leaves_its_log_and_summary(tmp_path):
    """An installation that fails ends the run at once, with the log saying why, the summary and the archive."""
    environment = {**os.environ, "OUT": str(tmp_path), "PYTHON": "/bin/false"}
    done = subprocess.run([str(ROOT / "tests/benchmarks/gpu_checks.sh")], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu-checks.log", "gpu-checks.tar.gz", "summary.md"]
    assert "cannot import the package and its dependencies" in (tmp_path / "gpu-checks.log").read_text()
    assert (tmp_path / "summary.md").read_text().startswith("# GPU checks")


def test_gpu_checks_skips_the_steps_its_time_budget_cannot_hold_and_still_writes_the_summary(tmp_path):
    environment = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECKS_BUDGET": "40"}
    done = subprocess.run([str(ROOT / "tests/benchmarks/gpu_checks.sh"), "--dry-run"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    log = (tmp_path / "gpu-checks.log").read_text()
    assert log.count("SKIPPED, the 40 s budget is spent") == 3, log
    assert "dry run on the CPU" in (tmp_path / "summary.md").read_text()
