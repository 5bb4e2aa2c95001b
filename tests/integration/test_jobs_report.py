"""The drift report job on a real database: periods, subsampling, once per period."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.jobs import drift_report, scheduler
from tests.integration.jobs_data import NOW, context_for, mixture, write_scores
from tests.store_data import register_model

pytestmark = pytest.mark.integration


def test_scheduled_report_covers_the_period_that_just_ended_once(store, tmp_path):
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(440, 40)  # 480 samples over 2 hours: one every 15 s
    write_scores(store, model.id, values, end=NOW, span=timedelta(hours=2))
    # NOW is 12:00 UTC; with 1-hour periods the run at 12:20 reports 11:00-12:00.
    context = context_for(store, now=NOW + timedelta(minutes=20), report_every_hours=1.0, reference_hours=1.0,
                          report_dir=str(tmp_path), report_top_samples=3)

    first = scheduler.run_job(context, "drift_report")
    again = scheduler.run_job(context, "drift_report")

    assert first.outcome == "ok", first.detail
    [report] = store.list_reports()
    assert (report.period_start, report.period_end) == (NOW - timedelta(hours=1), NOW)
    assert report.summary.samples == 240 and report.summary.reference.samples == 240
    assert report.summary.drifted == () and report.summary.correction == "holm"
    assert again.outcome == "skipped" and "exists already" in again.detail
    assert len(store.list_reports()) == 1


def test_busy_windows_are_subsampled_evenly_and_the_report_says_so(store, tmp_path, monkeypatch):
    monkeypatch.setattr(drift_report, "MAX_VALUES_PER_WINDOW", 100)
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(430, 50)  # 480 samples over 2 hours: one every 15 s
    write_scores(store, model.id, values, end=NOW, span=timedelta(hours=2))
    context = context_for(store, reference_hours=1.0, report_dir=str(tmp_path), report_top_samples=0)

    result = drift_report.make_report(context, NOW - timedelta(hours=1), NOW)

    assert result.report.summary.samples == 240, "volumes are exact"
    html = result.path.read_text()
    assert "holds 240 samples; the distributions and tests use an even subsample of" in html
    tests = {entry.indicator: entry for entry in result.report.summary.tests}
    assert tests["1C-Sum"].statistic is not None


def test_a_report_without_a_reference_says_nothing_was_compared_not_no_drift(store, tmp_path):
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(110, 10)  # all within the last hour: the hour before holds nothing
    write_scores(store, model.id, values, end=NOW, span=timedelta(minutes=50))
    context = context_for(store, reference_hours=1.0, report_dir=str(tmp_path), report_top_samples=0)

    result = drift_report.make_report(context, NOW - timedelta(hours=1), NOW)

    html = result.path.read_text()
    assert "No significant drift" not in html
    assert "Nothing could be compared: the reference window holds no scored samples" in html
    assert "nothing compared: the reference window holds no scored samples" in result.message
    assert result.drifted == []


def test_a_report_that_compared_says_how_many_indicators(store, tmp_path):
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(440, 40)
    write_scores(store, model.id, values, end=NOW, span=timedelta(hours=2))
    context = context_for(store, reference_hours=1.0, report_dir=str(tmp_path), report_top_samples=0)

    result = drift_report.make_report(context, NOW - timedelta(hours=1), NOW)

    compared = sum(1 for entry in result.report.summary.tests if entry.statistic is not None)
    assert compared > 0
    assert f"No significant drift against the reference window\n  ({compared} indicators compared)" in \
        result.path.read_text()


def test_a_long_sample_key_is_cut_visibly_in_the_thumbnail_grid_with_the_full_key_on_hover(store, tmp_path):
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(110, 10)
    prefix = "camera-7/2026/12/03/" + "very-long-directory-name/" * 9  # 250+ characters with the offset
    write_scores(store, model.id, values, end=NOW, span=timedelta(minutes=50), images=True, key_prefix=prefix)
    context = context_for(store, reference_hours=1.0, report_dir=str(tmp_path), report_top_samples=3)

    result = drift_report.make_report(context, NOW - timedelta(hours=1), NOW)

    html = result.path.read_text()
    assert ".thumbs .key { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }" in html
    assert html.count(f'<span class="key" title="{prefix}') == 3
