"""A generated drift report opens in headless Chromium and shows its plots and thumbnails."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from monitor.jobs.drift_report import make_report
from monitor.jobs.refit import refit
from monitor.names import INDICATORS
from tests.integration.jobs_data import add_threshold, context_for, mixture, write_scores
from tests.services import ROOT
from tests.store_data import register_model

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("MONITOR_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))


@pytest.fixture
def report_path(tmp_path):
    from monitor.store import Store, connect, upgrade

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    upgrade(connect(url))
    store = Store.open(url)
    try:
        # Real time: thresholds are stamped with the database's clock, and must fall in the period.
        end = datetime.now(timezone.utc)
        model = register_model(store, "classifier", "weights-1")
        add_threshold(store, model.id, 4.0)
        reference, _ = mixture(600, 60, seed=7)
        write_scores(store, model.id, reference, end=end - timedelta(hours=6), span=timedelta(hours=18), seed=1)
        current, _ = mixture(500, 50, seed=8)
        # The optimality indicators drift upwards in the period; the batch-norm ones do not.
        shifts = {name: 1.2 for name in ("MP", "H", "T1000", "ANG", "ANG++")}
        ids = write_scores(store, model.id, current, end=end, span=timedelta(hours=6), first_offset=10_000,
                           flagged=current > 4.0, threshold_id=store.active_threshold(model.id, "1C-Sum").id,
                           shifts=shifts, images=True, seed=2)
        for index in np.flatnonzero(current > 6)[:8]:
            store.add_label(ids[index], "OOD", labelled_by="operator")
        for index in np.flatnonzero(current < 0)[:20]:
            store.add_label(ids[index], "ID", labelled_by="operator")
        context = context_for(store, now=end, reference_hours=18.0, report_dir=str(tmp_path / "reports"),
                              report_top_samples=12)
        assert refit(context).fitted
        report_end = datetime.now(timezone.utc) + timedelta(seconds=1)
        result = make_report(context, end - timedelta(hours=6), report_end)
        assert result.report is not None and result.path.is_file()
        assert set(result.drifted) >= set(shifts), result.message
        assert "DMS" not in result.drifted
        return result.path
    finally:
        store.close()


def test_the_report_is_self_contained_and_renders_its_plots(report_path):
    from playwright.sync_api import sync_playwright

    html = report_path.read_text()
    assert "http://" not in html and "https://" not in html, "no external resources: one self-contained file"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "drift-report.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report_path.as_uri())
            page.wait_for_function("() => Array.from(document.images).every(image => image.complete)",
                                   timeout=15_000)
            plots = page.eval_on_selector_all(
                "img.plot", "images => images.map(image => [image.alt, image.naturalWidth, image.naturalHeight])")
            thumbnails = page.eval_on_selector_all(".thumbs img", "images => images.map(image => image.naturalWidth)")
            verdict = page.inner_text("#verdict")
            table_rows = page.locator("#drift-table tr").count()
            drifted_rows = page.locator("#drift-table tr.drifted").count()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert len(plots) == 4, plots
    assert all(width > 300 and height > 100 for _, width, height in plots), plots
    assert {alt for alt, _, _ in plots} == {"volume and flagged share over time",
                                            "indicator distributions, period against reference",
                                            "threshold history", "label counts"}
    assert len(thumbnails) == 12 and all(width > 0 for width in thumbnails)
    assert verdict.startswith("Drift detected") and "ANG++" in verdict
    assert table_rows == 1 + len(INDICATORS)
    assert drifted_rows >= 5
    assert screenshot.stat().st_size > 50_000
    print(f"report screenshot: {screenshot}")
