"""Thresholds per predicted class in headless Chromium: the thresholds page's class selector shows
one class's samples against the threshold that judges them, named as the model names the class,
and the sample page says which threshold judged the sample."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import served
from tests.browser.test_web_ui import log_in

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def class_app(tmp_path_factory):
    """Its own SQLite store: a per-class re-fit (own thresholds for classes 0 and 1, the global one
    for class 2) and two flagged samples judged by it, one of class 1 and one of class 2."""
    from monitor.store import Store, connect, upgrade
    from monitor.web import create_app
    from tests.integration.jobs_data import per_class_policy
    from tests.store_data import register_model
    from tests.web_data import web_settings

    workdir = tmp_path_factory.mktemp("web-class-thresholds")
    engine = connect(f"sqlite:///{workdir / 'monitor.db'}")
    upgrade(engine)
    store = Store(engine)
    model = register_model(store, "classifier", "weights-1")
    threshold, samples = per_class_policy(store, model.id, now=datetime.now(timezone.utc))
    app = create_app(web_settings(workdir / "reports"), store, consumer_lag=lambda: 0)
    try:
        with served(app) as base:
            yield base, threshold, samples
    finally:
        store.close()


def test_the_class_selector_shows_a_class_against_its_own_threshold(page: Page, class_app):
    base, threshold, _ = class_app
    own = threshold.class_thresholds.per_class()
    log_in(page, base, "vera", start="/thresholds")
    selector = page.locator("#class-selector a")
    expect(selector).to_have_text(["Global", "T-shirt/top (0)", "Trouser (1)"])
    expect(page.locator("#class-selector a.active")).to_have_text("Global")
    expect(page.locator("#class-thresholds tr[data-class='2']")).to_contain_text("Pullover (2)")
    expect(page.locator("#class-thresholds tr[data-class='2']")).to_contain_text("global")
    expect(page.locator("#class-thresholds tr[data-class='1']")).to_contain_text("own")
    expect(page.locator("#histogram g.threshold.active")).to_have_count(1)
    expect(page.locator("#histogram g.threshold.active title")).to_contain_text(f"= {threshold.value:.6g}")

    page.click("#class-selector a:has-text('Trouser (1)')")
    expect(page).to_have_url(re.compile(r"predicted_class=1"))
    expect(page.locator("#class-selector a.active")).to_have_text("Trouser (1)")
    expect(page.locator("#class-shown")).to_contain_text("Trouser (1)")
    expect(page.locator("#histogram g.threshold.active")).to_contain_text("(own)")
    expect(page.locator("#histogram g.threshold.active title")).to_contain_text(f"= {own[1]:.6g}")


def test_the_sample_page_says_which_threshold_judged_the_sample(page: Page, class_app):
    base, threshold, samples = class_app
    log_in(page, base, "vera", start=f"/samples/{samples['class']}")
    expect(page.locator("#judged-by")).to_contain_text(f"the own threshold of Trouser (1), policy #{threshold.id}")
    page.goto(f"{base}/samples/{samples['global']}")
    expect(page.locator("#judged-by")).to_contain_text(f"the global threshold, policy #{threshold.id}")
