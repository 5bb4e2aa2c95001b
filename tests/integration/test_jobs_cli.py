"""`ood-monitor refit` and `ood-monitor report` as a user runs them: real processes, real database."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.jobs_data import mixture, write_scores
from tests.services import ROOT, TansuBroker
from tests.store_data import register_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A migrated SQLite database with an hour of scores, a broker, and a config file naming both."""
    from monitor.store import Store, connect, upgrade

    folder = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{folder / 'monitor.db'}"
    upgrade(connect(url))
    store = Store.open(url)
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(900, 100)
    write_scores(store, model.id, values, end=datetime.now(timezone.utc), span=timedelta(hours=1))
    broker = TansuBroker().start()
    config = folder / "monitor.toml"
    config.write_text(f'[store]\nurl = "{url}"\n[kafka]\nbootstrap_servers = ["{broker.bootstrap}"]\n'
                      f'[jobs]\nreport_dir = "{folder / "reports"}"\n')
    try:
        yield store, model, config, folder
    finally:
        broker.stop()
        store.close()


def _cli(*args: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **environment})


def test_refit_command_fits_now_or_says_why_not(deployment):
    store, model, config, _ = deployment

    refused = _cli("refit", "--config", str(config), MONITOR_JOBS__MIN_SAMPLES="5000",
                   MONITOR_JOBS__REFIT_WINDOW_SAMPLES="10000")
    assert refused.returncode == 1, refused.stderr
    assert "not enough data" in refused.stdout and "no threshold is active yet" in refused.stdout
    assert store.active_threshold(model.id, "1C-Sum") is None

    fitted = _cli("refit", "--config", str(config))
    assert fitted.returncode == 0, fitted.stderr
    active = store.active_threshold(model.id, "1C-Sum")
    assert active is not None and f"threshold #{active.id}" in fitted.stdout
    assert active.fitted_by == "ood-monitor refit" and active.counts.n_flagged == 100
    assert [run.outcome for run in store.list_job_runs(job="refit")] == ["ok", "skipped"]


def test_report_command_writes_and_indexes_a_report(deployment):
    store, _, config, folder = deployment

    made = _cli("report", "--config", str(config), "--since", "2h", "--no-progress")
    assert made.returncode == 0, made.stderr
    [report] = store.list_reports(limit=1)
    assert report.file_path and os.path.isfile(report.file_path)
    assert report.file_path.startswith(str(folder / "reports"))
    assert report.summary.samples == 1000
    assert report.period_end - report.period_start == pytest.approx(timedelta(hours=2), abs=timedelta(seconds=30))
    assert f"report #{report.id}" in made.stdout

    wrong = _cli("report", "--config", str(config), "--since", "last tuesday")
    assert wrong.returncode == 2
    assert "--since" in wrong.stderr and "'last tuesday'" in wrong.stderr
