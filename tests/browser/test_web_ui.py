"""An operator's day in headless Chromium: log in, label from the queue by click and by keyboard,
reload and find the labels kept, read the thresholds chart; a viewer can only look."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.web_data import PASSWORDS
from tests.store_data import register_model

pytestmark = pytest.mark.browser


def log_in(page: Page, base: str, name: str, start: str = "/queue") -> None:
    page.goto(base + start)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORDS[name][1])
    page.click("button[type=submit]")
    expect(page).to_have_url(base + start)
    # The URL changes before the page's deferred script runs; keys pressed earlier would be lost.
    page.wait_for_load_state("load")


def label_history(store, sample_id: int) -> list[tuple[str, str]]:
    return [(row.label, row.labelled_by) for row in store.label_history(sample_id)]


def test_a_labeller_labels_by_click_and_by_keyboard_and_the_labels_stay(page: Page, live_app, screenshots):
    base, store, _ = live_app
    log_in(page, base, "lena")
    tiles = page.locator(".tile")
    expect(tiles).to_have_count(20)
    expect(tiles.nth(0)).to_have_class(re.compile(r"\bselected\b"))
    page.screenshot(path=str(screenshots / "queue.png"), full_page=True)

    # By click: open the first sample, press its OOD button.
    first_id = int(tiles.nth(0).get_attribute("data-sample-id"))
    tiles.nth(0).click()
    expect(page).to_have_url(re.compile(rf"/samples/{first_id}\?"))
    page.fill("textarea[name=note]", "a sandal among shirts")
    page.click("#label-ood")
    expect(page.locator(".notice")).to_have_text("Label saved.")
    expect(page.locator("#current-label")).to_have_text("OOD")
    expect(page.locator("#label-history")).to_contain_text("a sandal among shirts")
    page.screenshot(path=str(screenshots / "sample.png"), full_page=True)

    # By keyboard: back to the queue, move down with j, label ID with i.
    page.click("text=Back to the queue")
    tiles = page.locator(".tile")
    expect(tiles.nth(0).locator(".badge")).to_have_text("OOD")
    expect(tiles.nth(0)).to_have_attribute("aria-selected", "true")  # the keyboard script is ready
    page.keyboard.press("j")
    expect(tiles.nth(1)).to_have_class(re.compile(r"\bselected\b"))
    second_id = int(tiles.nth(1).get_attribute("data-sample-id"))
    page.keyboard.press("i")
    expect(tiles.nth(1).locator(".badge")).to_have_text("ID")
    expect(tiles.nth(2)).to_have_class(re.compile(r"\bselected\b"))  # moved on to the next one

    # A mistake and its undo: OOD then ID on the fourth; u takes the ID back.
    fourth_id = int(tiles.nth(3).get_attribute("data-sample-id"))
    page.keyboard.press("j")
    page.keyboard.press("o")
    expect(tiles.nth(3).locator(".badge")).to_have_text("OOD")
    page.keyboard.press("k")
    expect(tiles.nth(3)).to_have_class(re.compile(r"\bselected\b"))
    page.keyboard.press("i")
    expect(tiles.nth(3).locator(".badge")).to_have_text("ID")
    page.keyboard.press("u")
    expect(tiles.nth(3).locator(".badge")).to_have_text("OOD")
    expect(page.locator("#status")).to_contain_text("Undone")

    page.reload()
    tiles = page.locator(".tile")
    expect(tiles.nth(0).locator(".badge")).to_have_text("OOD")
    expect(tiles.nth(1).locator(".badge")).to_have_text("ID")
    expect(tiles.nth(3).locator(".badge")).to_have_text("OOD")
    page.screenshot(path=str(screenshots / "queue-labelled.png"), full_page=True)
    assert label_history(store, first_id) == [("OOD", "lena")]
    assert label_history(store, second_id) == [("ID", "lena")]
    assert label_history(store, fourth_id) == [("OOD", "lena"), ("ID", "lena"), ("OOD", "lena")]

    # The queue filter keeps only what is still to do.
    page.select_option("select[name=labelled]", "no")
    page.click("form.filters button[type=submit]")
    expect(page.locator(".tile")).to_have_count(17)


def test_the_thresholds_page_draws_the_distribution_with_each_threshold(page: Page, live_app, screenshots):
    base, _, _ = live_app
    log_in(page, base, "vera", start="/thresholds")
    chart = page.locator("#histogram svg.chart")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.bar")).to_have_count(40)
    expect(chart.locator("g.threshold.active line")).to_have_count(1)
    expect(chart.locator("g.threshold")).to_have_count(2)
    expect(page.locator("#threshold-history tbody tr")).to_have_count(2)
    box = chart.bounding_box()
    assert box and box["width"] > 400 and box["height"] > 100
    page.screenshot(path=str(screenshots / "thresholds.png"), full_page=True)
    page.click("nav.nav >> text=Overview")
    expect(page.locator("svg.chart")).to_be_visible()
    expect(page.locator("svg.chart polyline.share").first).to_be_visible()
    expect(page.locator(".card").nth(3)).to_contain_text("17")
    page.screenshot(path=str(screenshots / "overview.png"), full_page=True)
    page.click("nav.nav >> text=Reports")
    expect(page.locator("#reports tbody tr")).to_have_count(2)
    page.screenshot(path=str(screenshots / "reports.png"), full_page=True)


def test_a_viewer_sees_no_label_buttons_and_the_api_refuses_its_label(page: Page, live_app):
    base, store, seeded = live_app
    log_in(page, base, "vera")
    expect(page.locator(".role")).to_have_text("viewer")
    tiles = page.locator(".tile")
    last = tiles.nth(19)
    sample_id = int(last.get_attribute("data-sample-id"))
    page.keyboard.press("o")  # does nothing for a viewer
    expect(page.locator("#status")).to_have_text("")
    last.click()
    expect(page.locator("h1")).to_contain_text("Sample")
    expect(page.locator("#label-ood")).to_have_count(0)
    expect(page.locator("#label-id")).to_have_count(0)
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    answer = page.request.post(f"{base}/api/samples/{sample_id}/labels", data={"label": "OOD"},
                               headers={"X-CSRF-Token": csrf})
    assert answer.status == 403
    assert "viewer" in answer.json()["detail"]
    assert store.label_history(sample_id) == []


def test_keyboard_labelling_runs_through_the_unlabelled_queue_page_after_page(page: Page, live_app):
    base, store, _ = live_app
    log_in(page, base, "lena", start="/queue?labelled=no&per_page=4")
    total_before = int(page.locator("#queue-total").inner_text().split()[0])
    tiles = page.locator(".tile")
    expect(tiles.first).to_have_attribute("aria-selected", "true")  # the keyboard script is ready
    first_page = [int(tiles.nth(i).get_attribute("data-sample-id")) for i in range(4)]
    for index, key in enumerate("oioi"):
        page.keyboard.press(key)
        expect(tiles.nth(index).locator(".badge")).to_have_text("OOD" if key == "o" else "ID")
    page.keyboard.press("j")  # past the last tile: the page refills with the next unlabelled samples
    expect(page.locator("#queue-total")).to_have_text(f"{total_before - 4} samples")
    tiles = page.locator(".tile")
    expect(tiles).to_have_count(4)
    expect(tiles.locator(".badge")).to_have_count(0)
    second_page = [int(tiles.nth(i).get_attribute("data-sample-id")) for i in range(4)]
    assert not set(first_page) & set(second_page)
    assert [store.label_history(sample_id)[-1].label for sample_id in first_page] == ["OOD", "ID", "OOD", "ID"]


def test_a_drift_report_made_by_the_jobs_opens_from_the_reports_page_with_its_plots(page: Page, live_app, tmp_path,
                                                                                    screenshots):
    """The report's file is served sandboxed (no scripts): its inline styles and embedded plots must still show."""
    from datetime import datetime, timedelta, timezone

    from monitor.jobs.drift_report import make_report
    from monitor.store import Store, connect, upgrade
    from tests.integration.jobs_data import add_threshold, context_for, mixture, write_scores

    base, live_store, _ = live_app
    # The report is made over its own store (its own model), then indexed in the app's store by its row.
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(connect(url))
    with Store.open(url) as jobs_store:
        end = datetime.now(timezone.utc)
        model = register_model(jobs_store, "classifier", "weights-1")
        add_threshold(jobs_store, model.id, 4.0)
        reference, _ = mixture(300, 30, seed=7)
        write_scores(jobs_store, model.id, reference, end=end - timedelta(hours=6), span=timedelta(hours=18), seed=1)
        current, _ = mixture(200, 30, seed=8)
        write_scores(jobs_store, model.id, current, end=end, span=timedelta(hours=6), first_offset=10_000,
                     flagged=current > 4.0, threshold_id=jobs_store.active_threshold(model.id, "1C-Sum").id,
                     images=True, seed=2)
        # Written where the app serves reports from: its [jobs] report_dir, beside its database.
        report_dir = Path(live_store.engine.url.database).parent / "reports"
        context = context_for(jobs_store, now=end, reference_hours=18.0, report_dir=str(report_dir),
                              report_top_samples=6)
        result = make_report(context, end - timedelta(hours=6), end + timedelta(seconds=1))
    assert result.report is not None and result.path.is_file()
    row = live_store.add_report(result.report.period_start, result.report.period_end, result.report.summary,
                                file_path=str(result.path))

    log_in(page, base, "vera", start="/reports")
    with page.context.expect_page() as opened:
        page.click(f'a[href="/reports/{row.id}/file"]')
    report = opened.value
    report.wait_for_load_state()
    report.wait_for_function("() => Array.from(document.images).every(image => image.complete)", timeout=15_000)
    widths = report.eval_on_selector_all("img.plot", "images => images.map(image => image.naturalWidth)")
    assert len(widths) == 4 and all(width > 300 for width in widths)
    assert report.evaluate("() => getComputedStyle(document.querySelector('img.plot')).display") == "block"
    report.screenshot(path=str(screenshots / "drift-report-served.png"), full_page=True)
