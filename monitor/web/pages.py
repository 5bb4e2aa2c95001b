"""The server-rendered pages (Jinja2). Forms post with a CSRF token; reads need any role."""

from __future__ import annotations

import secrets
from dataclasses import replace
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.clock import utc_now
from monitor.errors import InputError, MonitorError
from monitor.names import INDICATORS
from monitor.store.labels import LabelConflict
from monitor.store.records import MAX_NOTE_LENGTH, QueuePage, check_label
from monitor.thresholds import METHODS
from monitor.web import charts, views
from monitor.web.api import decide_or_answer, report_file_response, what_if_evaluation
from monitor.web.app import client_address, image_response, state_of
from monitor.web.auth import CSRF_FIELD, LOGIN_CSRF_COOKIE, SESSION_COOKIE, Principal, csrf_matches
from monitor.web.filters import (
    LABELLED_CHOICES,
    SORT_CHOICES,
    FilterError,
    RowId,
    parse_float,
    parse_indicator,
    parse_predicted_class,
    parse_int,
    parse_queue_filters,
    parse_window_hours,
    reject_unknown,
)
from monitor.web.images import NPY_TYPES, NotDisplayable, array_to_png

router = APIRouter(include_in_schema=False)

NAV = (("overview", "/", "Overview"), ("queue", "/queue", "Flagged queue"), ("thresholds", "/thresholds", "Thresholds"),
       ("reports", "/reports", "Reports & alerts"))
WINDOW_CHOICES = ((1, "1 h"), (6, "6 h"), (24, "24 h"), (168, "7 d"), (720, "30 d"))
SORT_NAMES = {"time_desc": "Newest first", "time_asc": "Oldest first", "score_desc": "Highest score first",
              "score_asc": "Lowest score first"}


class LoginRequired(Exception):
    """Raised by a page whose visitor has no session; answered by a redirect to /login."""


def _safe_next(target: str | None) -> str:
    # Only paths of this site: never an absolute or protocol-relative URL (open redirect).
    # Browsers drop tabs and newlines from URLs, so "/\t/evil.example" would become "//evil.example".
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in target)):
        return "/"
    return target


def page_principal(request: Request, role: str = "viewer") -> Principal:
    principal = state_of(request).principal(request)
    if principal is None or principal.via != "session":
        raise LoginRequired()
    if not principal.can(role):
        raise HTTPException(status_code=403, detail=f"{principal.name} is a {principal.role}; this needs the {role} role")
    return principal


def render(request: Request, template: str, principal: Principal | None, status_code: int = 200, **context) -> HTMLResponse:
    state = state_of(request)
    return state.templates.TemplateResponse(
        request,
        template,
        {
            "principal": principal,
            "csrf": principal.csrf if principal else "",
            "nav": NAV,
            "can_label": bool(principal and principal.can("labeller")),
            **context,
        },
        status_code=status_code,
    )


def error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    # The cookie only: an error page must not itself fail on a throttled or unknown bearer token.
    principal = state_of(request).auth.principal_for_session(request.cookies.get(SESSION_COOKIE))
    return render(request, "error.html", principal, status_code=status_code, title=title, message=message, active="")


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def install_error_pages(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _error: LoginRequired):
        return login_redirect(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "text/html"):
            return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)
        titles = {401: "Login required", 403: "Not allowed", 404: "Not found", 405: "Method not allowed", 409: "Conflict"}
        return error_page(request, error.status_code, titles.get(error.status_code, "Error"), str(error.detail))


def _models_and_choice(request: Request):
    return _models_and_choice_of(state_of(request).store, request.query_params.get("model"))


# --- login --------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None):
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, login_csrf=token, next=_safe_next(next), error=None, active="")
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600,
                        secure=state_of(request).settings.web.cookie_secure)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request):
    form = await request.form()
    state = state_of(request)
    target = _safe_next(str(form.get("next") or "/"))
    if not csrf_matches(request.cookies.get(LOGIN_CSRF_COOKIE, ""), str(form.get(CSRF_FIELD) or "")):
        return _login_again(request, target, "The login form expired; please try again.", 403)
    name, password = str(form.get("username") or "").strip(), str(form.get("password") or "")
    # Counted per address and account name: guesses at one account from a shared address (a
    # proxy) throttle that account there, not every operator behind the same address.
    client = f"{client_address(request)} {name.lower()}"
    wait = state.failures.retry_after(client)
    if wait:
        response = _login_again(request, target, f"Too many failed logins for this account from your address; "
                                f"try again in {wait:.0f} s.", 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    # scrypt takes tens of milliseconds: off the event loop, so other requests and probes go on.
    account = await run_in_threadpool(state.auth.login, name, password) if name and password else None
    if account is None:
        state.failures.failed(client)
        return _login_again(request, target, "Unknown user name or wrong password.", 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, state.auth.issue_session(account.name), max_age=int(state.auth.session_lifetime_s),
        httponly=True, samesite="lax", secure=state.settings.web.cookie_secure, path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


def _login_again(request: Request, target: str, message: str, status_code: int) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, status_code=status_code, login_csrf=token, next=target,
                      error=message, active="")
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600,
                        secure=state_of(request).settings.web.cookie_secure)
    return response


@router.post("/logout")
async def logout(request: Request):
    principal = await run_in_threadpool(page_principal, request)
    form = await request.form()
    if not csrf_matches(principal.csrf, str(form.get(CSRF_FIELD) or "")):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- overview -----------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request):
    principal = page_principal(request)
    reject_unknown(request.query_params, ("model", "window_hours"))
    state = state_of(request)
    hours = parse_window_hours("window_hours", request.query_params.get("window_hours"), state.settings.web.window_hours)
    with state.store.reads():
        models, model = _models_and_choice(request)
        data = views.overview(state.store, model, hours, state.consumer_lag)
    chart = charts.volume_chart(data.buckets, views.describe_bucket(data.bucket_s))
    return render(request, "overview.html", principal, active="overview", data=data, chart=chart, models=models,
                  windows=WINDOW_CHOICES, hours=hours, bucket_label=views.describe_bucket(data.bucket_s))


# --- queue --------------------------------------------------------------------------------------


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request):
    principal = page_principal(request)
    state = state_of(request)
    error = None
    try:
        filters = parse_queue_filters(request.query_params, state.settings.web.page_size)
    except FilterError as problem:
        error = str(problem)
        filters = parse_queue_filters({}, state.settings.web.page_size)
    with state.store.reads():
        models, model = _models_and_choice(request)
        if model is None:
            result = QueuePage(items=[], total=0, page=1, per_page=filters.per_page)
        else:
            result = state.store.flagged_queue(model.id, filters)
    model_param = {"model": str(model.id)} if model and request.query_params.get("model") else {}

    def page_url(number: int) -> str:
        return "/queue?" + urlencode({**model_param, **filters.as_params(page=number)})

    # What j past the last tile opens: with "not yet labelled" the same page refills with the next ones.
    if filters.labelled == "no" and result.items:
        continue_url = page_url(result.page)
    elif result.page < result.pages:
        continue_url = page_url(result.page + 1)
    else:
        continue_url = ""
    return render(
        request, "queue.html", principal, status_code=400 if error else 200, active="queue", error=error,
        filters=filters, result=result, models=models, model=model, page_url=page_url, continue_url=continue_url,
        labelled_choices=LABELLED_CHOICES, sort_choices=[(s, SORT_NAMES[s]) for s in SORT_CHOICES],
        since_value=filters.since.strftime("%Y-%m-%dT%H:%M") if filters.since else "",
        until_value=filters.until.strftime("%Y-%m-%dT%H:%M") if filters.until else "",
        back=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    )


# --- one sample ---------------------------------------------------------------------------------


@router.get("/samples/{sample_id}", response_class=HTMLResponse)
def sample_page(request: Request, sample_id: RowId):
    principal = page_principal(request)
    state = state_of(request)
    try:
        with state.store.reads():
            report = views.sample_report(state.store, sample_id, state.settings.web.window_hours)
    except views.NotFound as error:
        raise HTTPException(status_code=404, detail=str(error)) from None
    notice = {"labelled": "Label saved.", "undone": "Label undone."}.get(request.query_params.get("done", ""))
    return render(request, "sample.html", principal, active="queue", report=report, sample=report.sample,
                  notice=notice, error=request.query_params.get("error") and _ERRORS.get(request.query_params["error"]),
                  back=_safe_next(request.query_params.get("back")) if request.query_params.get("back") else "/queue")


_ERRORS = {
    "nothing": "Nothing to undo.",
    "others": "The latest label is another operator's; only an admin may undo it.",
}


@router.get("/samples/{sample_id}/image")
def sample_image_page(request: Request, sample_id: RowId):
    page_principal(request)
    image = state_of(request).store.get_image(sample_id)
    if image is None:
        raise HTTPException(status_code=404, detail=f"sample {sample_id} has no stored image")
    if image.content_type in NPY_TYPES:  # arrays are drawn for the page; the API gives the stored bytes
        try:
            png = array_to_png(image.data, state_of(request).settings.imaging.max_pixels)
        except NotDisplayable as error:
            raise HTTPException(status_code=415, detail=f"sample {sample_id}: {error}") from None
        image = replace(image, content_type="image/png", data=png)
    return image_response(image)


async def _label_form(request: Request, sample_id: int) -> tuple[Principal, dict]:
    principal = await run_in_threadpool(page_principal, request, "labeller")
    form = await request.form()
    if not csrf_matches(principal.csrf, str(form.get(CSRF_FIELD) or "")):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token; reload the page and try again")
    if not await run_in_threadpool(state_of(request).store.sample_exists, sample_id):
        raise HTTPException(status_code=404, detail=f"sample {sample_id} not found")
    return principal, {key: str(value) for key, value in form.items()}


def _back_to_sample(sample_id: int, form: dict, **params) -> RedirectResponse:
    query = dict(params)
    if form.get("back"):
        query["back"] = _safe_next(form["back"])
    return RedirectResponse(f"/samples/{sample_id}?{urlencode(query)}", status_code=303)


@router.post("/samples/{sample_id}/label")
async def label_form(request: Request, sample_id: RowId):
    principal, form = await _label_form(request, sample_id)
    try:
        label, note = check_label(form.get("label", ""), form.get("note", ""))
    except InputError as error:
        raise HTTPException(status_code=400, detail=str(error)) from None
    await run_in_threadpool(state_of(request).store.add_label, sample_id, label, principal.name, note)
    return _back_to_sample(sample_id, form, done="labelled")


@router.post("/samples/{sample_id}/undo")
async def undo_form(request: Request, sample_id: RowId):
    principal, form = await _label_form(request, sample_id)
    try:
        await run_in_threadpool(state_of(request).store.undo_label, sample_id, principal.name, principal.can("admin"))
    except LabelConflict as conflict:
        text = str(conflict)
        code = "others" if "admin" in text else "nothing"
        return _back_to_sample(sample_id, form, error=code)
    return _back_to_sample(sample_id, form, done="undone")


# --- thresholds ---------------------------------------------------------------------------------


_DONE = {"approved": "Proposal approved: its threshold is active now.",
         "rejected": "Proposal rejected: the active threshold stays."}


@router.get("/thresholds", response_class=HTMLResponse)
def thresholds_page(request: Request):
    principal = page_principal(request)
    reject_unknown(request.query_params, ("model", "indicator", "window_hours", "predicted_class", "done"))
    return _thresholds(request, principal, request.query_params,
                       notice=_DONE.get(request.query_params.get("done", "")))


def _thresholds(request: Request, principal: Principal, params, *, what_if: dict | None = None,
                what_if_error: str | None = None, notice: str | None = None, status_code: int = 200) -> HTMLResponse:
    """The thresholds page: the histogram with the fitted thresholds, a waiting proposal with its
    shadow evaluation, and (after the what-if form) the evaluation of the candidate asked about."""
    state = state_of(request)
    hours = parse_window_hours("window_hours", params.get("window_hours"), state.settings.web.window_hours)
    indicator = parse_indicator("indicator", params.get("indicator"), "") or None
    predicted_class = parse_predicted_class("predicted_class", params.get("predicted_class"))
    also_drawn = [what_if["candidate"].threshold_of(predicted_class)] if what_if else []
    with state.store.reads():
        models, model = _models_and_choice_of(state.store, params.get("model"))
        data = views.thresholds_view(state.store, model, indicator, state.settings.stream.indicator, hours,
                                     also_drawn=also_drawn, predicted_class=predicted_class)
        proposal = state.store.waiting_proposal(model.id, data.indicator, now=utc_now()) if model else None

    def own(thresholds) -> str:  # whose threshold the chart shows for the selected class
        return " (own)" if thresholds.judged_by(predicted_class) is not None else ""

    marks = [
        charts.ThresholdMark(
            value=data.chart_value(row), active=row.active, proposed=bool(proposal and row.id == proposal.threshold_id),
            label=(f"proposed {row.method} #{row.id}" if proposal and row.id == proposal.threshold_id
                   else f"{row.method} #{row.id}" + (" (active)" if row.active else "")) + own(row.thresholds))
        for row in data.shown_on_chart
    ]
    if what_if:
        marks.append(charts.ThresholdMark(value=what_if["candidate"].threshold_of(predicted_class),
                                          label="what if" + own(what_if["candidate"]), proposed=True))
    chart = charts.histogram_chart(data.histogram.edges, data.histogram.counts, marks, data.indicator)
    return render(request, "thresholds.html", principal, status_code=status_code, active="thresholds", data=data,
                  chart=chart, models=models, windows=WINDOW_CHOICES, hours=hours, labels_used=views.labels_used,
                  indicators=INDICATORS, proposal=proposal, can_decide=principal.can("admin"), methods=METHODS,
                  what_if=what_if, what_if_error=what_if_error, notice=notice,
                  what_if_value=params.get("value", ""), what_if_method=params.get("method", ""))


def _models_and_choice_of(store, model_text: str | None):
    models = store.list_models()
    requested = parse_int("model", model_text or None, minimum=1)
    try:
        return models, views.pick_model(models, requested)
    except views.NotFound as error:
        raise HTTPException(status_code=404, detail=str(error)) from None


async def _admin_form(request: Request) -> tuple[Principal, dict]:
    principal = await run_in_threadpool(page_principal, request, "admin")
    form = await request.form()
    if not csrf_matches(principal.csrf, str(form.get(CSRF_FIELD) or "")):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token; reload the page and try again")
    return principal, {key: str(value) for key, value in form.items()}


def _thresholds_url(form: dict, **extra) -> str:
    params = {key: form[key] for key in ("model", "indicator", "window_hours", "predicted_class") if form.get(key)}
    return "/thresholds?" + urlencode({**params, **extra})


@router.post("/thresholds/proposals/{proposal_id}/decide")
async def decide_form(request: Request, proposal_id: RowId):
    principal, form = await _admin_form(request)
    decision = form.get("decision", "")
    if decision not in ("approve", "reject"):
        raise HTTPException(status_code=400, detail=f"decision: {decision!r} is not approve or reject")
    note = form.get("note", "").strip() or None
    if note is not None and len(note) > MAX_NOTE_LENGTH:
        raise HTTPException(status_code=400, detail=f"note: at most {MAX_NOTE_LENGTH} characters")
    await run_in_threadpool(decide_or_answer, request, proposal_id, decision, principal, note)
    return RedirectResponse(_thresholds_url(form, done="approved" if decision == "approve" else "rejected"),
                            status_code=303)


@router.post("/thresholds/what-if", response_class=HTMLResponse)
async def what_if_form(request: Request):
    principal, form = await _admin_form(request)
    return await run_in_threadpool(_what_if_page, request, principal, form)


def _what_if_page(request: Request, principal: Principal, form: dict) -> HTMLResponse:
    state = state_of(request)
    value_text, method = form.get("value", "").strip(), form.get("method", "").strip() or None
    try:
        value = parse_float("value", value_text or None)
        hours = parse_window_hours("window_hours", form.get("window_hours"), state.settings.web.window_hours)
        indicator = parse_indicator("indicator", form.get("indicator"), "") or state.settings.stream.indicator
        _, model = _models_and_choice_of(state.store, form.get("model"))
        if model is None:
            raise InputError("no model has been scored yet")
        predicted_class = parse_predicted_class("predicted_class", form.get("predicted_class"))
        candidate, how, evaluation = what_if_evaluation(request, model.id, indicator, hours, value, method,
                                                        predicted_class)
    except (FilterError, MonitorError) as error:
        return _thresholds(request, principal, form, what_if_error=str(error), status_code=400)
    params = {**form, "indicator": indicator}
    return _thresholds(request, principal, params,
                       what_if={"candidate": candidate, "how": how, "evaluation": evaluation.to_json()})


# --- reports and alerts -------------------------------------------------------------------------


@router.get("/reports", response_class=HTMLResponse)
def reports_page(request: Request):
    principal = page_principal(request)
    store = state_of(request).store
    with store.reads():
        reports = store.list_reports(limit=50)
        alerts = store.list_alerts(limit=100)
        jobs = store.list_job_runs(limit=30)
    return render(request, "reports.html", principal, active="reports", reports=reports, alerts=alerts, jobs=jobs)


@router.get("/reports/{report_id}/file")
def report_file_page(request: Request, report_id: RowId):
    page_principal(request)
    return report_file_response(request, report_id)


# --- API description ----------------------------------------------------------------------------


@router.get("/openapi.json")
def openapi_document(request: Request):
    principal = state_of(request).principal(request)
    if principal is None:
        raise HTTPException(status_code=401, detail="authentication required", headers={"WWW-Authenticate": "Bearer"})
    return JSONResponse(request.app.openapi())


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request):
    principal = page_principal(request)
    schema = request.app.openapi()
    operations = [
        {"method": method.upper(), "path": path, "summary": op.get("summary", ""),
         "parameters": [p for p in op.get("parameters", []) if p.get("in") == "query"]}
        for path, methods in schema.get("paths", {}).items()
        for method, op in methods.items()
    ]
    return render(request, "docs.html", principal, active="", operations=operations)
