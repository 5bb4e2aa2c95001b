"""A threshold proposal in headless Chromium: an admin sees it on the thresholds page beside the
active threshold, asks what another threshold would change, approves the proposal, and the
overview shows the new threshold; a labeller sees the proposal but no Approve button, and the
API refuses the labeller's approval."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import served
from tests.browser.test_web_ui import log_in

pytestmark = pytest.mark.browser

INDICATOR = "1C-Sum"
ACTIVE = 8.5


@pytest.fixture(scope="module")
def proposal_app(tmp_path_factory):
    """Its own SQLite store (the shared one's pages are counted by other tests): 900 ID-like and
    100 OOD-like samples of the last hour, an active threshold of 8.5 that misses most OOD ones,
    and the refit job's two-means fit waiting as a proposal ([thresholds] activation = propose)."""
    from monitor.jobs.refit import refit
    from monitor.store import Store, connect, upgrade
    from monitor.web import create_app
    from tests.integration.jobs_data import RecordingPublisher, add_threshold, context_for, mixture, write_scores
    from tests.store_data import register_model
    from tests.web_data import web_settings

    workdir = tmp_path_factory.mktemp("web-proposals")
    engine = connect(f"sqlite:///{workdir / 'monitor.db'}")
    upgrade(engine)
    store = Store(engine)
    now = datetime.now(timezone.utc)
    model = register_model(store, "classifier", "weights-1")
    active = add_threshold(store, model.id, ACTIVE)
    values, _ = mixture(900, 100)
    write_scores(store, model.id, values, end=now)
    context = context_for(store, RecordingPublisher(), now=now, refit_method="two-means",
                          sections={"thresholds": {"activation": "propose"}})
    proposal = refit(context).proposal
    assert proposal is not None
    app = create_app(web_settings(workdir / "reports"), store, consumer_lag=lambda: 0)
    try:
        with served(app) as base:
            yield base, store, model.id, active, proposal
    finally:
        store.close()


def test_a_labeller_sees_the_proposal_but_cannot_approve_it(page: Page, proposal_app):
    base, store, model_id, active, proposal = proposal_app
    log_in(page, base, "lena", start="/thresholds")
    expect(page.locator("#proposal")).to_contain_text(f"#{proposal.id}")
    expect(page.locator("#histogram g.threshold.proposed")).to_have_count(1)
    expect(page.locator("#approve")).to_have_count(0)
    expect(page.locator("#reject")).to_have_count(0)
    expect(page.locator("#what-if")).to_have_count(0)
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    answer = page.request.post(f"{base}/api/proposals/{proposal.id}/approve", data={"note": "mine"},
                               headers={"X-CSRF-Token": csrf})
    assert answer.status == 403
    assert "labeller" in answer.json()["detail"] and "admin" in answer.json()["detail"]
    assert store.active_threshold(model_id, INDICATOR).id == active
    assert store.get_proposal(proposal.id).status == "waiting"


def test_an_admin_asks_what_if_approves_and_the_overview_shows_the_new_threshold(page: Page, proposal_app,
                                                                                 screenshots):
    base, store, model_id, active, proposal = proposal_app
    log_in(page, base, "adam", start="/thresholds")
    chart = page.locator("#histogram svg.chart")
    expect(chart.locator("g.threshold.active")).to_have_count(1)
    expect(chart.locator("g.threshold.proposed")).to_have_count(1)
    evaluation = page.locator("#proposal-evaluation")
    expect(evaluation.locator("tr.flagged-share td.after")).to_contain_text("(100)")
    expect(evaluation.locator(".newly-flagged-count")).to_have_text(str(proposal.evaluation.newly_flagged_count))
    expect(evaluation.locator(".ids a").first).to_have_attribute("href", re.compile(r"^/samples/\d+$"))
    page.screenshot(path=str(screenshots / "thresholds-proposal.png"), full_page=True)

    # What if the threshold were 2? Every OOD sample and some ID ones: nothing is saved.
    page.fill("#what-if input[name=value]", "2")
    page.click("#what-if-run")
    asked = page.locator("#what-if-evaluation")
    expect(asked).to_be_visible()
    expect(asked.locator("tr.flagged-share td.before")).to_contain_text(f"({proposal.evaluation.flagged_before})")
    flagged = int(re.search(r"\((\d+)\)", asked.locator("tr.flagged-share td.after").inner_text()).group(1))
    assert flagged > 100
    expect(page.locator("#histogram g.threshold.proposed")).to_have_count(2)  # the proposal and the value asked about
    page.screenshot(path=str(screenshots / "thresholds-what-if.png"), full_page=True)
    assert store.active_threshold(model_id, INDICATOR).id == active
    assert [row.id for row in store.list_proposals(model_id)] == [proposal.id]

    # Or by a method, fitted on the window as a re-fit would.
    page.select_option("#what-if select[name=method]", "two-means")
    page.fill("#what-if input[name=value]", "")
    page.click("#what-if-run")
    expect(page.locator("#what-if-evaluation tr.flagged-share td.after")).to_contain_text("(100)")

    page.fill("#proposal textarea[name=note]", "catches every sandal")
    page.click("#approve")
    expect(page.locator("#notice")).to_contain_text("Proposal approved")
    expect(page.locator("#proposal")).to_have_count(0)
    expect(page.locator("#histogram g.threshold.active text")).to_contain_text(f"#{proposal.threshold_id}")
    decided = store.get_proposal(proposal.id)
    assert decided.status == "approved" and decided.decided_by == "adam"
    assert decided.decision_note == "catches every sandal"
    assert store.active_threshold(model_id, INDICATOR).id == proposal.threshold_id

    page.click("nav.nav >> text=Overview")
    row = page.locator("#active-thresholds tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("two-means")
    expect(row).to_contain_text(f"{proposal.value:.5g}")
    page.screenshot(path=str(screenshots / "overview-approved.png"), full_page=True)
