"""The operator app's JSON API and pages against a real SQLite and a real PostgreSQL store.

Each backend gets one seeded store per module (60 scored samples over the last 12 hours,
every third flagged with a PNG, two thresholds, alerts, job runs, reports); tests that label
use their own samples so they do not depend on each other's order.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from monitor.errors import ConfigError
from monitor.store import ImageBlob, ScoredSample, Store
from monitor.web import create_app
from monitor.web.auth import CSRF_HEADER, SESSION_COOKIE, hash_secret
from tests.integration.conftest import STORE_BACKENDS, empty_all_tables
from tests.web_data import PASSWORDS, TOKENS, bearer, seed_store, web_settings
from tests.store_data import FASHION_PREPROCESSING, register_model, report_summary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def web(request, store_engines, tmp_path_factory):
    engine = store_engines(request.param)
    empty_all_tables(engine)
    store = Store(engine)
    reports = tmp_path_factory.mktemp("reports")
    seeded = seed_store(store, reports)
    health = APIRouter()

    @health.get("/healthz")
    def healthz():
        return {"ok": True}

    app = create_app(web_settings(reports), store, extra_routers=[health], consumer_lag=lambda: 42)
    with TestClient(app) as client:
        yield client, store, seeded


def login(client: TestClient, name: str) -> str:
    """Log in through the form like a browser; returns the session's CSRF token."""
    client.cookies.clear()
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    answer = client.post("/login", data={"username": name, "password": PASSWORDS[name][1], "csrf_token": token,
                                         "next": "/queue"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/queue"
    page = client.get("/queue")
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)


API_READS = ["/api/me", "/api/models", "/api/overview", "/api/flagged", "/api/samples/{s}", "/api/samples/{s}/image",
             "/api/samples/{s}/labels", "/api/thresholds", "/api/alerts", "/api/jobs", "/api/reports",
             "/api/reports/{r}/file", "/openapi.json"]
PAGES = ["/", "/queue", "/samples/{s}", "/samples/{s}/image", "/thresholds", "/reports", "/reports/{r}/file", "/docs"]


def fill(path: str, seeded) -> str:
    return path.format(s=seeded.flagged_ids[1], r=seeded.report_id)


# --- access --------------------------------------------------------------------------------------


def test_every_api_endpoint_needs_credentials(web):
    client, _, seeded = web
    client.cookies.clear()
    for path in API_READS:
        answer = client.get(fill(path, seeded))
        assert answer.status_code == 401, path
        assert "Bearer" in answer.headers.get("www-authenticate", ""), path
    for path in ("/api/samples/{s}/labels", "/api/samples/{s}/labels/undo"):
        assert client.post(fill(path, seeded), json={"label": "OOD"}).status_code == 401
    wrong = {"Authorization": "Bearer not-a-configured-token"}
    assert client.get("/api/flagged", headers=wrong).status_code == 401


def test_every_page_redirects_to_the_login_without_a_session(web):
    client, _, seeded = web
    client.cookies.clear()
    for path in PAGES:
        answer = client.get(fill(path, seeded), follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next="), path
    # A bearer token is for the API: pages still want a login.
    assert client.get("/queue", headers=bearer("admin-bot"), follow_redirects=False).status_code == 303


def test_every_api_route_refuses_a_query_parameter_it_does_not_declare(web):
    client, _, seeded = web
    client.cookies.clear()
    headers = bearer("admin-bot")
    for path in [path for path in API_READS if path.startswith("/api/")]:
        # Credentials first: a caller without them learns nothing about the parameters.
        assert client.get(fill(path, seeded), params={"limt": "5"}).status_code == 401, path
        answer = client.get(fill(path, seeded), params={"limt": "5"}, headers=headers)
        assert answer.status_code == 422, path
        assert answer.json()["parameter"] == "limt" and "unknown parameter" in answer.json()["detail"], path
    no_parameters = client.get("/api/models", params={"model": "1"}, headers=headers).json()
    assert no_parameters["detail"] == "model: unknown parameter; this route takes no query parameters"
    some = client.get("/api/alerts", params={"limit": "5", "ofset": "1"}, headers=headers).json()
    assert some["parameter"] == "ofset" and "expected one of limit, offset" in some["detail"]
    flagged = client.get("/api/flagged", params={"class": "1", "sort": "score_desc"}, headers=headers)
    assert flagged.status_code == 200  # a declared parameter under its public name (an alias) passes
    label = client.post(fill("/api/samples/{s}/labels", seeded), params={"force": "1"}, json={"label": "OOD"},
                        headers=bearer("labeller-bot"))
    assert label.status_code == 422 and label.json()["parameter"] == "force"


def test_operability_routes_given_by_the_daemon_stay_public(web):
    client, _, _ = web
    client.cookies.clear()
    assert client.get("/healthz").json() == {"ok": True}


def test_a_viewer_reads_everything_but_may_not_label(web):
    client, _, seeded = web
    client.cookies.clear()
    for path in API_READS:
        assert client.get(fill(path, seeded), headers=bearer("viewer-bot")).status_code == 200, path
    sample = seeded.flagged_ids[2]
    refused = client.post(f"/api/samples/{sample}/labels", json={"label": "OOD"}, headers=bearer("viewer-bot"))
    assert refused.status_code == 403
    assert "viewer" in refused.json()["detail"] and "labeller" in refused.json()["detail"]
    assert client.post(f"/api/samples/{sample}/labels/undo", headers=bearer("viewer-bot")).status_code == 403
    assert client.get(f"/api/samples/{sample}/labels", headers=bearer("viewer-bot")).json()["history"] == []
    assert client.get("/api/accounts", headers=bearer("labeller-bot")).status_code == 403
    accounts = client.get("/api/accounts", headers=bearer("admin-bot")).json()
    assert {"name": "vera", "role": "viewer"} in accounts["accounts"]
    assert "scrypt" not in str(accounts)


def test_login_rejects_a_wrong_password_and_a_form_without_its_csrf_token(web):
    client, _, _ = web
    client.cookies.clear()
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    wrong = client.post("/login", data={"username": "lena", "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    assert SESSION_COOKIE not in client.cookies
    client.cookies.clear()
    forged = client.post("/login", data={"username": "lena", "password": PASSWORDS["lena"][1], "csrf_token": "x"})
    assert forged.status_code == 403 and SESSION_COOKIE not in client.cookies


def test_login_only_redirects_inside_the_site(web):
    client, _, _ = web
    client.cookies.clear()
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    answer = client.post("/login", data={"username": "vera", "password": PASSWORDS["vera"][1], "csrf_token": token,
                                         "next": "//evil.example/x"}, follow_redirects=False)
    assert answer.headers["location"] == "/"


def test_sessions_expire_and_tampered_cookies_are_refused(web):
    client, _, _ = web
    auth = client.app.state.web.auth
    client.cookies.clear()
    expired = auth.issue_session("lena", now=datetime.now(timezone.utc).timestamp() - auth.session_lifetime_s - 1)
    client.cookies.set(SESSION_COOKIE, expired)
    assert client.get("/queue", follow_redirects=False).status_code == 303
    assert client.get("/api/me").status_code == 401
    fresh = auth.issue_session("vera")
    body, signature = fresh.rsplit(".", 1)
    client.cookies.set(SESSION_COOKIE, body.replace(body[5], "A" if body[5] != "A" else "B", 1) + "." + signature)
    assert client.get("/api/me").status_code == 401
    client.cookies.set(SESSION_COOKIE, fresh)
    assert client.get("/api/me").json() == {"name": "vera", "role": "viewer", "via": "session"}


def test_logout_ends_the_session(web):
    client, _, _ = web
    csrf = login(client, "vera")
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/queue", follow_redirects=False).status_code == 303


# --- labelling -----------------------------------------------------------------------------------


def test_a_token_labels_a_sample_and_the_history_names_it(web):
    client, _, seeded = web
    client.cookies.clear()
    sample = seeded.flagged_ids[3]
    first = client.post(f"/api/samples/{sample}/labels", json={"label": "OOD", "note": "a shoe on a shirt"},
                        headers=bearer("labeller-bot"))
    assert first.status_code == 201
    assert first.json()["current_label"] == "OOD"
    second = client.post(f"/api/samples/{sample}/labels", json={"label": "ID"}, headers=bearer("admin-bot"))
    history = second.json()["history"]
    assert [(h["label"], h["labelled_by"], h["note"]) for h in history] == [
        ("OOD", "labeller-bot", "a shoe on a shirt"), ("ID", "admin-bot", None)]
    detail = client.get(f"/api/samples/{sample}", headers=bearer("viewer-bot")).json()
    assert detail["label"] == "ID" and len(detail["labels"]) == 2


def test_undo_restores_the_previous_label_and_keeps_every_change(web):
    client, _, seeded = web
    client.cookies.clear()
    sample = seeded.flagged_ids[4]
    url = f"/api/samples/{sample}/labels"
    headers = bearer("labeller-bot")
    assert client.post(url + "/undo", headers=headers).status_code == 409  # nothing yet
    # A first label taken back leaves the sample unlabelled; the history keeps both rows.
    client.post(url, json={"label": "OOD"}, headers=headers)
    cleared = client.post(url + "/undo", headers=headers)
    assert cleared.status_code == 200 and cleared.json()["current_label"] is None
    assert [h["label"] for h in cleared.json()["history"]] == ["OOD", None]
    unlabelled = client.get("/api/flagged", params={"labelled": "no", "per_page": 100}, headers=headers).json()
    assert sample in [item["id"] for item in unlabelled["items"]]
    client.post(url, json={"label": "ID"}, headers=headers)
    client.post(url, json={"label": "OOD"}, headers=headers)
    undone = client.post(url + "/undo", headers=headers).json()
    assert undone["current_label"] == "ID"
    assert [h["label"] for h in undone["history"]] == ["OOD", None, "ID", "OOD", "ID"]
    assert "undo of label" in undone["history"][-1]["note"]
    # Someone else's latest label: only an admin may take it back.
    client.post(url, json={"label": "OOD"}, headers=bearer("admin-bot"))
    refused = client.post(url + "/undo", headers=headers)
    assert refused.status_code == 409 and "admin" in refused.json()["detail"]
    assert client.post(url + "/undo", headers=bearer("admin-bot")).json()["current_label"] == "ID"


def test_an_undone_first_label_no_longer_counts_as_labelled_on_the_overview(web):
    client, _, seeded = web
    client.cookies.clear()
    sample = seeded.unflagged_ids[-1]  # in the overview's window, labelled by no other test
    headers = bearer("labeller-bot")

    def labelled() -> tuple[int, int]:
        api = client.get("/api/overview", params={"window_hours": 24}, headers=headers).json()["counts"]["labelled"]
        login(client, "vera")
        page = client.get("/", params={"window_hours": 24}).text
        client.cookies.clear()
        card = re.search(r'Labelled samples</div><div class="value">([\d,]+)<', page)
        return api, int(card.group(1).replace(",", ""))

    before = labelled()
    assert before[0] == before[1]
    client.post(f"/api/samples/{sample}/labels", json={"label": "ID"}, headers=headers)
    assert labelled() == (before[0] + 1, before[0] + 1)
    assert client.post(f"/api/samples/{sample}/labels/undo", headers=headers).json()["current_label"] is None
    assert labelled() == before, "a sample whose only label was taken back is unlabelled again"


def test_label_requests_are_validated(web):
    client, _, seeded = web
    client.cookies.clear()
    sample = seeded.flagged_ids[5]
    headers = bearer("labeller-bot")
    bad = client.post(f"/api/samples/{sample}/labels", json={"label": "maybe"}, headers=headers)
    assert bad.status_code == 422 and "label" in str(bad.json()["detail"])
    long_note = client.post(f"/api/samples/{sample}/labels", json={"label": "ID", "note": "x" * 2001}, headers=headers)
    assert long_note.status_code == 422 and "note" in str(long_note.json()["detail"])
    missing = client.post("/api/samples/999999/labels", json={"label": "ID"}, headers=headers)
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
    assert client.get(f"/api/samples/{sample}/labels", headers=headers).json()["history"] == []


def test_a_session_labels_through_the_api_only_with_its_csrf_header(web):
    client, _, seeded = web
    csrf = login(client, "lena")
    sample = seeded.flagged_ids[6]
    refused = client.post(f"/api/samples/{sample}/labels", json={"label": "OOD"})
    assert refused.status_code == 403 and CSRF_HEADER in refused.json()["detail"]
    accepted = client.post(f"/api/samples/{sample}/labels", json={"label": "OOD"}, headers={CSRF_HEADER: csrf})
    assert accepted.status_code == 201
    assert accepted.json()["history"][-1]["labelled_by"] == "lena"


def test_the_sample_page_labels_with_a_form_post_that_carries_csrf(web):
    client, _, seeded = web
    csrf = login(client, "lena")
    sample = seeded.flagged_ids[7]
    page = client.get(f"/samples/{sample}")
    assert 'id="label-ood"' in page.text and 'id="label-id"' in page.text
    forged = client.post(f"/samples/{sample}/label", data={"label": "OOD", "csrf_token": "forged"})
    assert forged.status_code == 403
    posted = client.post(f"/samples/{sample}/label", data={"label": "OOD", "note": "odd texture", "csrf_token": csrf},
                         follow_redirects=False)
    assert posted.status_code == 303
    shown = client.get(posted.headers["location"])
    assert "Label saved" in shown.text and "odd texture" in shown.text
    history = client.get(f"/api/samples/{sample}/labels", headers=bearer("viewer-bot")).json()["history"]
    assert [(h["label"], h["labelled_by"]) for h in history] == [("OOD", "lena")]


def test_pages_name_the_predicted_class_where_the_model_knows_its_class_names(web):
    client, store, seeded = web
    login(client, "vera")
    sample = seeded.flagged_ids[3]
    predicted = client.get(f"/api/samples/{sample}", headers=bearer("viewer-bot")).json()["predicted_class"]
    name = FASHION_PREPROCESSING.class_names[predicted]
    assert f'<dd id="predicted-class">{html.escape(name)} ({predicted})</dd>' in client.get(f"/samples/{sample}").text
    queue = client.get("/queue").text
    assert f'<span class="class-label">{html.escape(name)} ({predicted})</span>' in queue
    assert ">class " not in queue


def test_a_viewer_sees_no_label_buttons_and_cannot_post_the_form(web):
    client, _, seeded = web
    csrf = login(client, "vera")
    sample = seeded.flagged_ids[8]
    page = client.get(f"/samples/{sample}")
    assert page.status_code == 200 and 'id="label-ood"' not in page.text
    assert 'data-can-label="false"' in client.get("/queue").text
    assert client.post(f"/samples/{sample}/label", data={"label": "OOD", "csrf_token": csrf}).status_code == 403


# --- the queue -----------------------------------------------------------------------------------


def test_the_queue_lists_flagged_samples_newest_first_with_pages(web):
    client, _, seeded = web
    client.cookies.clear()
    headers = bearer("viewer-bot")
    everything = client.get("/api/flagged", headers=headers).json()
    assert everything["total"] == len(seeded.flagged_ids) == 20
    times = [item["scored_at"] for item in everything["items"]]
    assert times == sorted(times, reverse=True)
    assert all(item["flagged"] for item in everything["items"])
    pages = [client.get("/api/flagged", params={"per_page": 7, "page": page}, headers=headers).json() for page in (1, 2, 3)]
    assert [len(p["items"]) for p in pages] == [7, 7, 6] and pages[0]["pages"] == 3
    assert sorted(i["id"] for p in pages for i in p["items"]) == sorted(seeded.flagged_ids)
    no_image = next(i for i in everything["items"] if i["id"] == seeded.no_image_flagged_id)
    assert no_image["has_image"] is False


def test_the_queue_filters_and_sorts(web):
    client, _, seeded = web
    client.cookies.clear()
    headers = bearer("viewer-bot")

    def ask(**params):
        return client.get("/api/flagged", params=params, headers=headers).json()["items"]

    by_score = ask(sort="score_desc")
    scores = [item["score"] for item in by_score]
    assert scores == sorted(scores, reverse=True)
    assert [i["score"] for i in ask(sort="score_asc")] == sorted(scores)
    assert {item["predicted_class"] for item in ask(**{"class": 3})} == {3}
    middle = sorted(scores)[5]
    assert all(item["score"] >= middle for item in ask(min_score=middle)) and len(ask(min_score=middle)) == 15
    assert all(item["score"] <= middle for item in ask(max_score=middle)) and len(ask(max_score=middle)) == 6
    cut = seeded.now - timedelta(hours=6)
    recent = ask(since=cut.isoformat())
    assert recent and all(datetime.fromisoformat(i["scored_at"]) >= cut for i in recent)
    older = ask(until=cut.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert len(recent) + len(older) == 20
    sample = seeded.flagged_ids[9]
    client.post(f"/api/samples/{sample}/labels", json={"label": "OOD"}, headers=bearer("labeller-bot"))
    labelled_ood = {i["id"] for i in ask(labelled="OOD")}
    assert sample in labelled_ood and all(i["label"] == "OOD" for i in ask(labelled="OOD"))
    assert sample not in {i["id"] for i in ask(labelled="no")}
    assert all(i["label"] is None for i in ask(labelled="no"))
    assert sample in {i["id"] for i in ask(labelled="yes")}


@pytest.mark.parametrize(
    "params, parameter",
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}, "until"),
        ({"min_score": "high"}, "min_score"),
        ({"min_score": "5", "max_score": "1"}, "max_score"),
        ({"min_score": "nan"}, "min_score"),
        ({"class": "-1"}, "class"),
        ({"class": "shoe"}, "class"),
        ({"labelled": "perhaps"}, "labelled"),
        ({"sort": "random"}, "sort"),
        ({"page": "0"}, "page"),
        ({"per_page": "5000"}, "per_page"),
        ({"scor_min": "1"}, "scor_min"),
        ({"model": "999"}, None),
    ],
)
def test_bad_queue_filters_get_a_4xx_naming_the_parameter(web, params, parameter):
    client, _, _ = web
    client.cookies.clear()
    answer = client.get("/api/flagged", params=params, headers=bearer("viewer-bot"))
    if parameter is None:
        assert answer.status_code == 404 and "model 999" in answer.json()["detail"]
        return
    assert answer.status_code == 422
    assert answer.json()["parameter"] == parameter
    assert answer.json()["detail"].startswith(f"{parameter}:")


def test_the_queue_page_shows_a_bad_filter_above_the_form(web):
    client, _, _ = web
    login(client, "vera")
    page = client.get("/queue", params={"min_score": "lots"})
    assert page.status_code == 400
    assert "min_score: &#39;lots&#39; is not a number" in page.text


def test_other_endpoints_validate_their_parameters(web):
    client, _, seeded = web
    client.cookies.clear()
    headers = bearer("viewer-bot")
    assert client.get("/api/thresholds", params={"indicator": "ANG+++"}, headers=headers).json()["parameter"] == "indicator"
    assert client.get("/api/thresholds", params={"bins": "1"}, headers=headers).json()["parameter"] == "bins"
    assert client.get("/api/overview", params={"window_hours": "-3"}, headers=headers).json()["parameter"] == "window_hours"
    assert client.get("/api/alerts", params={"limit": "0"}, headers=headers).json()["parameter"] == "limit"
    assert client.get("/api/samples/999999", headers=headers).status_code == 404
    assert client.get("/api/samples/abc", headers=headers).status_code == 422
    assert client.get("/api/samples/999999/image", headers=headers).json()["detail"] == "sample 999999 not found"
    no_image = client.get(f"/api/samples/{seeded.no_image_flagged_id}/image", headers=headers)
    assert no_image.status_code == 404 and "no stored image" in no_image.json()["detail"]


# --- what the pages show -------------------------------------------------------------------------


def test_the_sample_shows_every_indicator_with_its_percentile_in_the_window(web):
    client, _, seeded = web
    client.cookies.clear()
    detail = client.get(f"/api/samples/{seeded.flagged_ids[1]}", headers=bearer("viewer-bot")).json()
    readings = {r["name"]: r for r in detail["indicators"]}
    assert len(readings) == 20 and readings["1C-Sum"]["thresholded"]
    # Flagged samples score about 5 sigma above the rest: high percentiles, never above 100.
    assert all(50 < r["percentile"] <= 100 for r in readings.values())
    assert detail["threshold"]["id"] == seeded.active_threshold_id
    assert detail["image_url"].endswith("/image")


def test_images_are_the_stored_bytes_with_their_type_and_nosniff(web):
    client, store, seeded = web
    client.cookies.clear()
    sample = seeded.flagged_ids[1]
    answer = client.get(f"/api/samples/{sample}/image", headers=bearer("viewer-bot"))
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["x-content-type-options"] == "nosniff"
    stored = store.get_image(sample)
    assert answer.content == stored.data and answer.content.startswith(b"\x89PNG")


def test_a_stored_type_that_is_not_an_image_is_served_as_opaque_bytes(web):
    client, store, seeded = web
    client.cookies.clear()
    now = datetime.now(timezone.utc)
    hostile = ScoredSample(
        topic="hostile", partition=0, offset=1, sample_key="html-in-disguise", model_id=seeded.model_id,
        received_at=now, scored_at=now, predicted_class=0, scores={"1C-Sum": 9.0}, flagged=True, score=9.0,
        score_indicator="1C-Sum", threshold_id=seeded.active_threshold_id,
        image=ImageBlob("text/html", b"<script>alert(1)</script>"),
    )
    sample_id = store.write([hostile]).sample_ids[hostile.position]
    answer = client.get(f"/api/samples/{sample_id}/image", headers=bearer("viewer-bot"))
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in answer.headers["content-security-policy"]


def test_the_overview_counts_the_window_and_shows_lag_thresholds_jobs_and_alerts(web):
    client, _, seeded = web
    client.cookies.clear()
    overview = client.get("/api/overview", params={"window_hours": 24}, headers=bearer("viewer-bot")).json()
    assert overview["counts"]["scored"] >= 60 and overview["counts"]["flagged"] >= 20
    assert sum(b["total"] for b in overview["buckets"]) == overview["counts"]["scored"]
    assert sum(b["flagged"] for b in overview["buckets"]) == overview["counts"]["flagged"]
    assert overview["consumer_lag"] == 42
    assert [t["method"] for t in overview["active_thresholds"]] == ["two-means"]
    assert {run["outcome"] for run in overview["job_runs"]} == {"ok", "failed"}
    assert {run["runner"] for run in overview["job_runs"]} >= {"monitor-refit:1234", "monitor-drift_report:1234"}
    assert {a["kind"] for a in overview["alerts"]} == {"threshold_changed", "ood_rate", "drift", "job_failed"}
    changed = next(a for a in overview["alerts"] if a["kind"] == "threshold_changed")
    assert changed["payload"]["threshold_id"] == seeded.active_threshold_id
    assert changed["payload"]["counts"]["n_labelled_ood"] == 12
    login(client, "vera")
    page = client.get("/")
    assert page.status_code == 200 and '<svg class="chart"' in page.text and "two-means" in page.text
    assert ">42 <" in page.text  # the lag card
    assert "monitor-drift_report:1234" in page.text  # which process ran each job
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert re.fullmatch(r"app;dur=\d+\.\d", page.headers["server-timing"])


def test_the_thresholds_show_a_histogram_with_each_fitted_value_and_the_history(web):
    client, store, seeded = web
    client.cookies.clear()
    data = client.get("/api/thresholds", headers=bearer("viewer-bot")).json()
    assert data["indicator"] == "1C-Sum"
    assert data["histogram"]["total"] >= 60 and sum(data["histogram"]["counts"]) == data["histogram"]["total"]
    edges = data["histogram"]["edges"]
    assert edges[0] <= seeded.active_threshold <= edges[-1] and edges[0] <= seeded.old_threshold <= edges[-1]
    since = datetime.fromisoformat(data["window_start"])
    values = store.window_scores(seeded.model_id, "1C-Sum", since=since).values
    assert data["histogram"]["counts"] == np.histogram(values, bins=edges)[0].tolist()
    methods = [(row["method"], row["active"], row["labels_used"]) for row in data["history"]]
    # The refit job fitted the active one with the operators' 12 OOD and 40 ID labels; the
    # daemon's configured default before it used none.
    assert methods == [("two-means", True, "12 OOD, 40 ID"), ("configured", False, "none")]
    login(client, "vera")
    page = client.get("/thresholds")
    assert page.text.count('class="threshold active"') == 1 and page.text.count('class="threshold"') == 1
    assert "two-means" in page.text and "12 OOD, 40 ID" in page.text


def test_reports_are_served_by_id_from_the_stored_path_only(web):
    client, _, seeded = web
    client.cookies.clear()
    headers = bearer("viewer-bot")
    listed = client.get("/api/reports", headers=headers).json()
    assert {r["id"] for r in listed} == {seeded.report_id, seeded.missing_report_id}
    assert all("file_path" not in r for r in listed)
    answer = client.get(f"/api/reports/{seeded.report_id}/file", headers=headers)
    assert answer.text == seeded.report_text and answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"].startswith("sandbox")
    gone = client.get(f"/api/reports/{seeded.missing_report_id}/file", headers=headers)
    assert gone.status_code == 404 and "no file" in gone.json()["detail"]
    assert client.get("/api/reports/424242/file", headers=headers).status_code == 404
    assert client.get("/api/reports/..%2F..%2Fetc%2Fpasswd/file", headers=headers).status_code in (404, 422)
    jobs = client.get("/api/jobs", headers=headers).json()
    assert {(run["job"], run["runner"]) for run in jobs} >= {("retention", "monitor-retention:1234")}
    login(client, "vera")
    assert client.get(f"/reports/{seeded.report_id}/file").text == seeded.report_text
    page = client.get("/reports").text
    assert "Ran on" in page and "monitor-retention:1234" in page
    # The report job's summary: which indicators drifted, as the job found them.
    assert seeded.drifted and f"drift in {', '.join(seeded.drifted)}" in page
    listed_summary = next(r for r in listed if r["id"] == seeded.report_id)["summary"]
    assert listed_summary["drifted"] == seeded.drifted and listed_summary["tests"][0]["indicator"] == "MP"


def test_a_report_row_pointing_outside_the_report_directory_is_not_served(tmp_path):
    from monitor.store import connect, upgrade

    engine = connect(f"sqlite:///{tmp_path / 'reports.db'}")
    upgrade(engine)
    try:
        store = Store(engine)
        seeded = seed_store(store, tmp_path / "reports")
        elsewhere = tmp_path / "private.html"  # a real file, but not a report
        elsewhere.write_text("<p>not for viewers</p>", encoding="utf-8")
        now = datetime.now(timezone.utc)
        stray = store.add_report(now - timedelta(hours=1), now, report_summary(), file_path=str(elsewhere))
        climbing = store.add_report(now - timedelta(hours=2), now, report_summary(),
                                    file_path=str(tmp_path / "reports" / ".." / "private.html"))
        with TestClient(create_app(web_settings(tmp_path / "reports"), store)) as client:
            headers = bearer("viewer-bot")
            assert client.get(f"/api/reports/{seeded.report_id}/file", headers=headers).status_code == 200
            for report in (stray, climbing):
                answer = client.get(f"/api/reports/{report.id}/file", headers=headers)
                assert answer.status_code == 404 and "not for viewers" not in answer.text
    finally:
        engine.dispose()


def test_openapi_describes_every_api_route(web):
    client, _, _ = web
    client.cookies.clear()
    schema = client.get("/openapi.json", headers=bearer("viewer-bot")).json()
    for path in ("/api/flagged", "/api/samples/{sample_id}", "/api/samples/{sample_id}/labels",
                 "/api/samples/{sample_id}/labels/undo", "/api/thresholds", "/api/overview", "/api/reports/{report_id}/file"):
        assert path in schema["paths"], path
    names = {p["name"] for p in schema["paths"]["/api/flagged"]["get"]["parameters"]}
    assert {"since", "until", "class", "labelled", "min_score", "max_score", "sort", "page", "per_page"} <= names


# --- configuration -------------------------------------------------------------------------------


def test_malformed_credentials_are_config_errors_naming_the_entry(web):
    _, store, _ = web
    good_hash = hash_secret("password-1", n=2**10)
    for web_values, expected in (
        ({"accounts": ["alice-viewer-" + good_hash]}, r"\[web\] accounts\[0\]: expected 'NAME:ROLE:HASH'"),
        ({"accounts": [f"alice:boss:{good_hash}"]}, r"\[web\] accounts\[0\] \(alice\): role 'boss'"),
        ({"tokens": ["bot:viewer:plaintext-token"]}, r"\[web\] tokens\[0\] \(bot\): expected 'scrypt"),
        ({"session_secret": "short"}, r"\[web\] session_secret: must be at least 32"),
    ):
        # The settings refuse them as they are read (start-up checks); the app would as well.
        with pytest.raises(ConfigError, match=expected) as refused:
            create_app(web_settings(**web_values), store)
        assert "plaintext-token" not in str(refused.value)


def test_tokens_named_in_the_config_are_the_only_ones_accepted(web):
    client, _, _ = web
    client.cookies.clear()
    for name, (role, _) in TOKENS.items():
        assert client.get("/api/me", headers=bearer(name)).json() == {"name": name, "role": role, "via": "token"}


def test_an_empty_store_shows_empty_pages_not_errors(tmp_path):
    from monitor.store import connect, upgrade

    engine = connect(f"sqlite:///{tmp_path / 'empty.db'}")
    upgrade(engine)
    try:
        with TestClient(create_app(web_settings(), Store(engine))) as client:
            headers = bearer("viewer-bot")
            assert client.get("/api/flagged", headers=headers).json()["total"] == 0
            assert client.get("/api/overview", headers=headers).json()["model"] is None
            assert client.get("/api/thresholds", headers=headers).json()["history"] == []
            login(client, "vera")
            assert "No model has scored anything yet" in client.get("/").text
            assert "No flagged sample matches" in client.get("/queue").text
            assert "No threshold has been fitted yet" in client.get("/thresholds").text
            assert "No drift report yet" in client.get("/reports").text
    finally:
        engine.dispose()


def test_the_daemon_serves_the_operator_app_with_its_probes_and_lag(web):
    """What `ood-monitor run` mounts: the probes stay public, the pages want a login, the lag shows."""
    from monitor.service.http import build_http_app
    from monitor.stream.operability import DaemonState

    _, store, _ = web
    state = DaemonState(lag_value=1234)
    app, is_operator_app = build_http_app(state, web_settings(), store, consumer_lag=state.lag)
    assert is_operator_app
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/queue", follow_redirects=False).status_code == 303
        overview = client.get("/api/overview", headers=bearer("viewer-bot")).json()
        assert overview["consumer_lag"] == 1234


def test_with_several_models_the_pages_show_the_newest_unless_asked(tmp_path):
    from monitor.store import connect, upgrade

    engine = connect(f"sqlite:///{tmp_path / 'two.db'}")
    upgrade(engine)
    try:
        store = Store(engine)
        older = seed_store(store, tmp_path / "reports")  # registers "fashion-cnn" with 20 flagged samples
        newer = register_model(store, "fashion-cnn", "sha256:retrained")
        with TestClient(create_app(web_settings(), store)) as client:
            headers = bearer("viewer-bot")
            assert client.get("/api/flagged", headers=headers).json() | {"items": None} == {
                "model": newer.id, "total": 0, "page": 1, "per_page": 48, "pages": 1, "items": None}
            assert client.get("/api/flagged", params={"model": older.model_id}, headers=headers).json()["total"] == 20
            login(client, "vera")
            overview = client.get("/", params={"model": older.model_id})
            assert f'<option value="{older.model_id}" selected>' in overview.text
            assert "two-means" in overview.text
            assert "No threshold has been fitted yet" in client.get("/thresholds").text
    finally:
        engine.dispose()


def test_an_array_sample_is_drawn_as_png_on_the_pages_and_given_raw_by_the_api(web):
    import io

    from PIL import Image

    client, store, seeded = web
    array = np.linspace(0, 1, 3 * 16 * 20, dtype=np.float32).reshape(3, 16, 20)
    raw = io.BytesIO()
    np.save(raw, array, allow_pickle=False)
    now = datetime.now(timezone.utc)
    sample = ScoredSample(
        topic="arrays", partition=0, offset=1, sample_key="array-sample", model_id=seeded.model_id,
        received_at=now, scored_at=now, predicted_class=1, scores={"1C-Sum": 7.0}, flagged=True, score=7.0,
        score_indicator="1C-Sum", threshold_id=seeded.active_threshold_id,
        image=ImageBlob("application/x-npy", raw.getvalue()),
    )
    sample_id = store.write([sample]).sample_ids[sample.position]
    api = client.get(f"/api/samples/{sample_id}/image", headers=bearer("viewer-bot"))
    assert api.headers["content-type"] == "application/x-npy" and api.content == raw.getvalue()
    login(client, "vera")
    page = client.get(f"/samples/{sample_id}/image")
    assert page.headers["content-type"] == "image/png" and page.headers["x-content-type-options"] == "nosniff"
    picture = Image.open(io.BytesIO(page.content))
    assert (picture.size, picture.mode) == ((20, 16), "RGB")


def test_guessing_passwords_or_tokens_is_answered_429_after_the_configured_failures(web):
    _, store, _ = web
    with TestClient(create_app(web_settings(max_failed_logins=3), store)) as client:
        assert client.get("/api/me", headers=bearer("labeller-bot")).status_code == 200  # proven once
        for _ in range(3):
            assert client.get("/api/me", headers={"Authorization": "Bearer guess"}).status_code == 401
        throttled = client.get("/api/me", headers=bearer("viewer-bot"))  # not yet proven: it waits too
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
        # A token this process has already verified keeps working for the client behind that address.
        assert client.get("/api/me", headers=bearer("labeller-bot")).status_code == 200

    def log_in(client, name, password):
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        return client.post("/login", data={"username": name, "password": password, "csrf_token": token},
                           follow_redirects=False)

    with TestClient(create_app(web_settings(max_failed_logins=3), store)) as client:
        for _ in range(3):
            assert log_in(client, "lena", "wrong").status_code == 401
        answer = log_in(client, "lena", PASSWORDS["lena"][1])
        assert answer.status_code == 429 and "Too many failed logins" in answer.text
        assert SESSION_COOKIE not in client.cookies
        # Another operator behind the same address is not locked out by guesses at lena.
        assert log_in(client, "vera", PASSWORDS["vera"][1]).status_code == 303


def test_hostile_bytes_and_huge_numbers_get_4xx_never_a_server_error(web):
    client, _, seeded = web
    client.cookies.clear()
    headers = bearer("viewer-bot")
    # A cookie or CSRF value with a non-ASCII character is simply not a valid session.
    poisoned = {"Cookie": "ood_session=x.\u00e9".encode("latin-1")}
    assert client.get("/api/me", headers=poisoned).status_code == 401
    assert client.get("/", headers=poisoned, follow_redirects=False).status_code == 303
    csrf = login(client, "lena")
    refused = client.post(f"/api/samples/{seeded.flagged_ids[0]}/labels", json={"label": "OOD"},
                          headers={"X-CSRF-Token": "\u00e9".encode("latin-1")})
    assert refused.status_code == 403 and csrf
    client.cookies.clear()
    too_big = "9" * 25
    for path in (f"/api/samples/{too_big}", f"/api/samples/{2**63}/labels", f"/api/reports/{too_big}/file"):
        assert client.get(path, headers=headers).status_code == 422, path
    for params in ({"class": too_big}, {"since": "0001-01-01T00:00+01:00"}, {"until": "9999-12-31T23:59-01:00"}):
        answer = client.get("/api/flagged", params=params, headers=headers)
        assert answer.status_code in (400, 422) and answer.status_code != 500, params
        assert next(iter(params)) in answer.text
    assert client.get("/api/alerts", params={"offset": too_big}, headers=headers).status_code in (400, 422)


def test_the_back_link_never_leaves_the_site(web):
    client, _, seeded = web
    login(client, "lena")
    page = client.get(f"/samples/{seeded.flagged_ids[0]}", params={"back": "/\t/evil.example"})
    assert page.status_code == 200
    assert "evil.example" not in page.text


def test_an_oversized_body_is_refused_before_anything_reads_it(web):
    client, _, seeded = web
    client.cookies.clear()
    huge = b'{"label": "OOD", "note": "' + b"x" * 200_000 + b'"}'
    answer = client.post(f"/api/samples/{seeded.flagged_ids[0]}/labels", content=huge,
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "65536" in answer.json()["detail"]


def test_head_is_answered_like_get_without_a_body(web):
    client, _, _ = web
    client.cookies.clear()
    for path in ("/healthz", "/login", "/static/labelling.js"):
        got, head = client.get(path), client.head(path)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path
    # A page behind the login answers HEAD as it answers GET: a redirect to the login form.
    got = client.get("/queue", follow_redirects=False)
    head = client.head("/queue", follow_redirects=False)
    assert (head.status_code, head.headers.get("location")) == (got.status_code, got.headers.get("location"))
