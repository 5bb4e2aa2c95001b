"""Threshold proposals through the operator app on SQLite and PostgreSQL: the JSON API and the
thresholds page decide them (admins only), and the what-if form evaluates a candidate without
saving anything. The proposal is made by the refit job itself, as in production."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient

from monitor.jobs.refit import refit
from monitor.web import create_app
from tests.integration.jobs_data import RecordingPublisher, add_threshold, context_for, mixture, write_scores
from tests.integration.test_web_api import login
from tests.store_data import register_model
from tests.web_data import bearer, web_settings

pytestmark = pytest.mark.integration

INDICATOR = "1C-Sum"
ACTIVE = 8.5


@pytest.fixture
def proposed(store, tmp_path):
    """900 ID-like and 100 OOD-like samples scored in the last hour, an active threshold of 8.5
    (it misses most OOD ones) and the two-means re-fit waiting as a proposal; the app over it."""
    now = datetime.now(timezone.utc)
    model = register_model(store, "classifier", "weights-1")
    active = add_threshold(store, model.id, ACTIVE)
    values, _ = mixture(900, 100)
    write_scores(store, model.id, values, end=now)
    context = context_for(store, RecordingPublisher(), now=now, refit_method="two-means",
                          sections={"thresholds": {"activation": "propose"}})
    proposal = refit(context).proposal
    assert proposal is not None and store.active_threshold(model.id, INDICATOR).id == active
    app = create_app(web_settings(tmp_path / "reports"), store, consumer_lag=lambda: None)
    with TestClient(app) as client:
        yield client, store, model, active, proposal, values


def _counts(store, model_id: int) -> tuple[list[int], int, list[tuple[int, str]]]:
    """Every threshold, the active one and every proposal with its status."""
    return ([row.id for row in store.threshold_history(model_id)], store.active_threshold(model_id, INDICATOR).id,
            [(row.id, row.status) for row in store.list_proposals(model_id)])


def test_the_api_shows_the_proposal_and_lets_only_an_admin_decide_it(proposed):
    client, store, model, active, proposal, _ = proposed
    shown = client.get("/api/thresholds", headers=bearer("viewer-bot")).json()["proposal"]
    assert shown["id"] == proposal.id and shown["status"] == "waiting"
    assert shown["evaluation"]["flagged_after"] == 100 and shown["evaluation"]["n"] == 1000

    for who in ("viewer-bot", "labeller-bot"):
        refused = client.post(f"/api/proposals/{proposal.id}/approve", json={}, headers=bearer(who))
        assert refused.status_code == 403
        assert "needs the admin role" in refused.json()["detail"]
    assert store.active_threshold(model.id, INDICATOR).id == active

    answer = client.post(f"/api/proposals/{proposal.id}/approve", json={"note": "catches the sandals"},
                         headers=bearer("admin-bot"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "approved" and body["decided_by"] == "admin-bot"
    assert body["decision_note"] == "catches the sandals"
    assert store.active_threshold(model.id, INDICATOR).id == proposal.threshold_id
    [alert] = store.list_alerts(kind="threshold_activated")
    assert alert.payload.payload.approved_by == "admin-bot" and alert.payload.payload.previous_threshold_id == active

    again = client.post(f"/api/proposals/{proposal.id}/reject", headers=bearer("admin-bot"))
    assert again.status_code == 409 and "approved" in again.json()["detail"]
    assert client.post("/api/proposals/999999/approve", headers=bearer("admin-bot")).status_code == 404
    assert client.get(f"/api/proposals/{proposal.id}", headers=bearer("viewer-bot")).json()["status"] == "approved"
    assert [p["id"] for p in client.get("/api/proposals", headers=bearer("viewer-bot")).json()] == [proposal.id]
    assert client.get("/api/thresholds", headers=bearer("viewer-bot")).json()["proposal"] is None
    too_long = client.post(f"/api/proposals/{proposal.id}/approve", json={"note": "x" * 2001},
                           headers=bearer("admin-bot"))
    assert too_long.status_code == 422


def test_a_rejection_through_the_api_keeps_the_active_threshold(proposed):
    client, store, model, active, proposal, _ = proposed
    answer = client.post(f"/api/proposals/{proposal.id}/reject", json={"note": "wait for more labels"},
                         headers=bearer("admin-bot"))
    assert answer.status_code == 200 and answer.json()["status"] == "rejected"
    assert store.active_threshold(model.id, INDICATOR).id == active
    assert store.list_alerts(kind="threshold_activated") == []
    assert client.post(f"/api/proposals/{proposal.id}/approve", headers=bearer("admin-bot")).status_code == 409


def test_what_if_counts_what_a_value_would_flag_and_saves_nothing(proposed):
    client, store, model, active, _, values = proposed
    before = _counts(store, model.id)
    answer = client.post("/api/thresholds/what-if", json={"value": 2.0, "window_hours": 24},
                         headers=bearer("admin-bot"))
    assert answer.status_code == 200, answer.text
    evaluation = answer.json()["evaluation"]
    # Counted by hand: every indicator of a sample holds its value plus a fixed offset (jobs_data).
    stored = np.array(store.window_scores(model.id, INDICATOR, last=1000).values)
    assert evaluation["n"] == 1000
    assert evaluation["flagged_before"] == int((stored > ACTIVE).sum())
    assert evaluation["flagged_after"] == int((stored > 2.0).sum())
    assert evaluation["newly_flagged_count"] == int(((stored > 2.0) & ~(stored > ACTIVE)).sum())
    assert evaluation["cleared_count"] == 0
    assert sum(c["n"] for c in evaluation["classes"]) == 1000

    fitted = client.post("/api/thresholds/what-if", json={"method": "two-means"}, headers=bearer("admin-bot"))
    assert fitted.status_code == 200, fitted.text
    assert 2.0 < fitted.json()["candidate"]["global"] < 7.0
    assert fitted.json()["evaluation"]["flagged_after"] == 100
    assert _counts(store, model.id) == before, "a what-if stores no threshold and no proposal"

    assert client.post("/api/thresholds/what-if", json={"value": 2.0}, headers=bearer("labeller-bot")).status_code == 403
    both = client.post("/api/thresholds/what-if", json={"value": 2.0, "method": "proportion"},
                       headers=bearer("admin-bot"))
    assert both.status_code == 422 and "either" in both.json()["detail"]
    bad = client.post("/api/thresholds/what-if", json={"method": "median"}, headers=bearer("admin-bot"))
    assert bad.status_code == 422 and bad.json()["detail"]


def test_the_page_shows_the_proposal_to_all_and_the_buttons_to_admins(proposed):
    client, store, model, active, proposal, _ = proposed
    login(client, "lena")
    page = client.get("/thresholds")
    assert page.status_code == 200 and 'id="proposal"' in page.text
    assert 'class="threshold proposed"' in page.text
    assert 'id="approve"' not in page.text and 'id="what-if"' not in page.text
    refused = client.post(f"/thresholds/proposals/{proposal.id}/decide", data={"decision": "approve"},
                          follow_redirects=False)
    assert refused.status_code == 403

    csrf = login(client, "adam")
    page = client.get("/thresholds")
    assert 'id="approve"' in page.text and 'id="what-if"' in page.text
    forged = client.post(f"/thresholds/proposals/{proposal.id}/decide", data={"decision": "approve"},
                         follow_redirects=False)
    assert forged.status_code == 403 and store.active_threshold(model.id, INDICATOR).id == active

    what_if = client.post("/thresholds/what-if", data={"csrf_token": csrf, "value": "2", "indicator": INDICATOR})
    assert what_if.status_code == 200 and 'id="what-if-evaluation"' in what_if.text
    wrong = client.post("/thresholds/what-if", data={"csrf_token": csrf, "value": "two"})
    assert wrong.status_code == 400 and "not a number" in wrong.text

    done = client.post(f"/thresholds/proposals/{proposal.id}/decide", follow_redirects=False,
                       data={"csrf_token": csrf, "decision": "approve", "note": "ok", "indicator": INDICATOR})
    assert done.status_code == 303 and "done=approved" in done.headers["location"]
    assert store.active_threshold(model.id, INDICATOR).id == proposal.threshold_id
    assert store.get_proposal(proposal.id).decided_by == "adam"
    after = client.get(done.headers["location"])
    assert "Proposal approved" in after.text and 'id="proposal"' not in after.text
    again = client.post(f"/thresholds/proposals/{proposal.id}/decide", headers={"accept": "text/html"},
                        data={"csrf_token": csrf, "decision": "reject"})
    assert again.status_code == 409 and re.search("approved", again.text)


def test_the_samples_that_change_side_open_in_the_queue_flagged_or_not(proposed):
    client, store, model, _, proposal, _ = proposed
    newly = list(proposal.evaluation.newly_flagged)
    assert proposal.evaluation.newly_flagged_count == len(newly) > 0
    login(client, "vera")
    page = client.get("/thresholds").text
    link = re.search(r'<span class="newly-flagged-link"> <a class="queue-link" href="([^"]+)"', page).group(1)
    assert link.startswith("/queue?") and "ids=" in link

    # Not flagged under the active threshold, so absent from the plain queue; the link shows them.
    flagged = client.get("/api/flagged?per_page=200", headers=bearer("viewer-bot")).json()
    assert not {item["id"] for item in flagged["items"]} & set(newly)
    named = client.get("/api/flagged", params={"ids": ",".join(map(str, newly)), "per_page": "200"},
                       headers=bearer("viewer-bot")).json()
    assert named["total"] == len(newly) and sorted(item["id"] for item in named["items"]) == sorted(newly)
    queue = client.get(link.replace("&amp;", "&")).text
    assert 'id="queue-ids"' in queue and f"The {len(newly)} samples a shadow evaluation named" in queue
    assert re.search(r'id="queue-total">' + f"{len(newly)} samples", queue)

    too_many = client.get("/api/flagged", params={"ids": ",".join(map(str, range(1, 502)))},
                          headers=bearer("viewer-bot"))
    assert too_many.status_code == 422 and too_many.json()["parameter"] == "ids"
    assert client.get("/api/flagged?ids=1,x", headers=bearer("viewer-bot")).status_code == 422
