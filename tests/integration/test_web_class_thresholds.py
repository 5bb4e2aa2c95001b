"""Thresholds per predicted class through the operator app on SQLite and PostgreSQL: the
thresholds page and API select a class (named as the model names it), and the sample page and
API say which threshold judged a sample (its class's own or the global one, and the policy)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from monitor.web import create_app
from tests.integration.jobs_data import per_class_policy
from tests.integration.test_web_api import login
from tests.store_data import register_model
from tests.web_data import bearer, web_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def per_class(store, tmp_path):
    now = datetime.now(timezone.utc)
    model = register_model(store, "classifier", "weights-1")  # Fashion-MNIST class names
    threshold, samples = per_class_policy(store, model.id, now=now)
    app = create_app(web_settings(tmp_path / "reports"), store, consumer_lag=lambda: None)
    with TestClient(app) as client:
        yield client, threshold, samples


def test_the_api_shows_a_class_against_the_threshold_that_judges_it(per_class):
    client, threshold, _ = per_class
    own = threshold.class_thresholds.per_class()
    assert set(own) == {0, 1}
    every = client.get("/api/thresholds", headers=bearer("viewer-bot")).json()
    assert every["classes"] == [{"predicted_class": 0, "label": "T-shirt/top (0)"},
                                {"predicted_class": 1, "label": "Trouser (1)"}]
    assert every["predicted_class"] is None and every["histogram"]["total"] == 682
    [active] = [row for row in every["history"] if row["active"]]
    assert active["class_thresholds"]["thresholds"] == {str(k): v for k, v in own.items()}
    assert active["judges_selected_class_by"] == threshold.value

    trousers = client.get("/api/thresholds?predicted_class=1", headers=bearer("viewer-bot")).json()
    assert trousers["predicted_class"] == 1 and trousers["histogram"]["total"] == 331
    [active] = [row for row in trousers["history"] if row["active"]]
    assert active["judges_selected_class_by"] == own[1]
    pullovers = client.get("/api/thresholds?predicted_class=2", headers=bearer("viewer-bot")).json()
    assert pullovers["histogram"]["total"] == 21
    assert [row for row in pullovers["history"] if row["active"]][0]["judges_selected_class_by"] == threshold.value

    for bad in ("-1", "shirt"):
        refused = client.get(f"/api/thresholds?predicted_class={bad}", headers=bearer("viewer-bot"))
        assert refused.status_code == 422 and refused.json()["parameter"] == "predicted_class"


def test_the_sample_api_says_which_threshold_judged_it(per_class):
    client, threshold, samples = per_class
    own = client.get(f"/api/samples/{samples['class']}", headers=bearer("viewer-bot")).json()["judged_by"]
    assert own == {"value": threshold.class_thresholds.per_class()[1], "scope": "class", "predicted_class": 1,
                   "class_label": "Trouser (1)", "policy_version": threshold.id}
    fallback = client.get(f"/api/samples/{samples['global']}", headers=bearer("viewer-bot")).json()["judged_by"]
    assert fallback == {"value": threshold.value, "scope": "global", "predicted_class": None,
                        "class_label": None, "policy_version": threshold.id}


def test_the_pages_show_the_class_selector_and_the_judging_threshold(per_class):
    client, threshold, samples = per_class
    login(client, "vera")
    overview = client.get("/").text
    assert re.search(r'id="active-thresholds".*global; own for 2 classes', overview, re.S)
    page = client.get("/thresholds").text
    assert re.search(r'id="class-selector".*Global.*T-shirt/top \(0\).*Trouser \(1\)', page, re.S)
    assert re.search(r'id="class-thresholds".*Pullover \(2\).*global', page, re.S)
    selected = client.get("/thresholds?predicted_class=1").text
    assert "Samples predicted as <strong>Trouser (1)</strong>" in selected
    assert client.get("/thresholds?predicted_class=x").status_code == 400
    sample = client.get(f"/samples/{samples['class']}").text
    assert re.search(r'id="judged-by">[^<]*<span class="muted">\(the own threshold of Trouser \(1\), policy #'
                     + str(threshold.id), sample)
    sample = client.get(f"/samples/{samples['global']}").text
    assert re.search(r'id="judged-by">[^<]*<span class="muted">\(the global threshold, policy #' + str(threshold.id),
                     sample)


def test_what_if_with_a_class_changes_that_class_s_threshold_only(per_class):
    client, threshold, _ = per_class
    own = threshold.class_thresholds.per_class()
    answer = client.post("/api/thresholds/what-if", json={"value": 20.0, "predicted_class": 1, "window_hours": 24},
                         headers=bearer("admin-bot"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["candidate"] == {"global": threshold.value, "per_class": {"0": own[0], "1": 20.0}}
    shares = {share["predicted_class"]: share for share in body["evaluation"]["classes"]}
    assert shares[1]["threshold_before"] == own[1] and shares[1]["threshold_after"] == 20.0
    assert shares[1]["flagged_after"] == 0 < shares[1]["flagged_before"]
    assert shares[0]["flagged_after"] == shares[0]["flagged_before"]  # class 0 keeps its own threshold
    assert shares[2]["threshold_after"] == threshold.value
    assert body["evaluation"]["newly_flagged_count"] == 0 and body["evaluation"]["cleared_count"] > 0
    refused = client.post("/api/thresholds/what-if", json={"value": 1.0, "predicted_class": -1},
                          headers=bearer("admin-bot"))
    assert refused.status_code == 422

    csrf = login(client, "adam")
    page = client.post("/thresholds/what-if", data={"csrf_token": csrf, "value": "20", "predicted_class": "1",
                                                    "window_hours": "24"})
    assert page.status_code == 200
    assert re.search(r"<h3>Candidate 20 ", page.text) and "typed in for predicted class 1" in page.text
    assert re.search(r'<tr data-class="1"><td>Trouser \(1\)</td>', page.text)
