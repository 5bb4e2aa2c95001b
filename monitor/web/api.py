"""The JSON API: everything the pages show and do, for scripts (bearer token) and the pages' own script.

Roles: viewer reads, labeller also labels, admin also undoes other operators' labels,
approves or rejects threshold proposals, asks what a threshold would change, and lists the
configured accounts. Errors are JSON `{"detail": ...}`; a bad parameter answers
422 with `parameter` naming it.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.encoders import jsonable_encoder as _encode
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError

from monitor.clock import utc_now
from monitor.errors import InputError, MonitorError
from monitor import proposals
from monitor.store.payloads import AlertDocument, Payload
from monitor.store.labels import LabelConflict
from monitor.store.proposals import ProposalConflict, ProposalRow
from monitor.store.records import LABEL_ID, LABEL_OOD, MAX_NOTE_LENGTH, QueuePage
from monitor.web import views
from monitor.web.app import REPORT_CSP, api_principal, image_response, state_of
from monitor.web.auth import Principal
from monitor.thresholds import METHODS, ClassThresholds
from monitor.web.filters import (
    RowId,
    parse_indicator,
    parse_int,
    parse_page_window,
    parse_predicted_class,
    parse_queue_filters,
    parse_window_hours,
    reject_unknown,
)

router = APIRouter(prefix="/api", tags=["api"])

REPORT_TYPES = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8", ".json": "application/json",
                ".pdf": "application/pdf", ".png": "image/png", ".svg": "image/svg+xml", ".md": "text/markdown; charset=utf-8",
                ".txt": "text/plain; charset=utf-8", ".csv": "text/csv; charset=utf-8"}


def _query_parameter_names(dependant) -> list[str]:
    """The query parameters a route declares, its dependencies' included (by their public names)."""
    names = [field.alias for field in dependant.query_params]
    for dependency in dependant.dependencies:
        names += _query_parameter_names(dependency)
    return names


def _caller(request: Request, role: str) -> Principal:
    """The authenticated caller with `role`; then any query parameter the route does not declare is
    refused (422 naming it): a misspelt filter must not silently return more than was asked for."""
    principal = api_principal(request, role)
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        reject_unknown(request.query_params, tuple(_query_parameter_names(route.dependant)))
    return principal


def viewer(request: Request) -> Principal:
    return _caller(request, "viewer")


def labeller(request: Request) -> Principal:
    return _caller(request, "labeller")


def admin(request: Request) -> Principal:
    return _caller(request, "admin")


def jsonable_encoder(value):
    """JSON-ready values; a stored JSON document (a typed payload) as the document it is."""
    return _encode(_documents(value))


def _documents(value):
    if isinstance(value, (Payload, AlertDocument)):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _documents(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_documents(item) for item in value]
    if isinstance(value, dict):
        return {key: _documents(item) for key, item in value.items()}
    return value


def _json(value) -> JSONResponse:
    return JSONResponse(jsonable_encoder(value))


def _model_param(request: Request) -> int | None:
    return parse_int("model", request.query_params.get("model") or None, minimum=1)


def _not_found(error: views.NotFound) -> HTTPException:
    return HTTPException(status_code=404, detail=str(error))


class LabelIn(BaseModel):
    # The HTTP schema of monitor.store.records.check_label, which the store applies to every label.
    label: Literal[LABEL_ID, LABEL_OOD] = Field(description="ID: the model may be trusted on it; OOD: it may not.")
    note: str | None = Field(default=None, max_length=MAX_NOTE_LENGTH,
                             description="Optional free text kept with the label.")


class DecisionIn(BaseModel):
    note: str | None = Field(default=None, max_length=MAX_NOTE_LENGTH,
                             description="Optional free text kept with the decision.")


class WhatIfIn(BaseModel):
    """A candidate threshold: a value, or a method fitted on the window as a re-fit would."""

    model: int | None = Field(default=None, ge=1, description="Model id; default the newest.")
    indicator: str | None = Field(default=None, description="Indicator; default the monitored one ([stream] indicator).")
    value: float | None = Field(default=None, allow_inf_nan=False, description="The candidate threshold.")
    method: Literal[METHODS] | None = Field(default=None, description="Or: fit one on the window by this method.")
    window_hours: float | None = Field(default=None, gt=0, le=24 * 366, description="Window ending now, in hours.")
    predicted_class: int | None = Field(default=None, ge=0, le=2**31 - 1, description=(
        "With a value: the value is this predicted class's own threshold, every other threshold as active."))


def _body_after(role_dependency, model: type[BaseModel]):
    """A request body read only once the caller is known to have the role (see label_body)."""

    async def read(request: Request, principal: Principal = Depends(role_dependency)):
        raw = await request.body()
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as error:
            raise RequestValidationError([{**problem, "loc": ("body", *problem["loc"])}
                                          for problem in error.errors()]) from None

    return read


def proposal_json(proposal: ProposalRow) -> dict:
    """A proposal as the API and the pages' script see it: its status as it stands now."""
    body = jsonable_encoder(proposal)
    body["status"] = proposal.status_at(utc_now())
    return body


@router.get("/me", summary="Who is calling, with which role")
def me(principal: Principal = Depends(viewer)):
    return {"name": principal.name, "role": principal.role, "via": principal.via}


@router.get("/accounts", summary="The configured accounts and tokens (names and roles only; admin)")
def accounts(request: Request, principal: Principal = Depends(admin)):
    auth = state_of(request).auth
    return {
        "accounts": [{"name": c.name, "role": c.role} for c in auth.accounts.values()],
        "tokens": [{"name": c.name, "role": c.role} for c in auth.tokens],
    }


@router.get("/models", summary="Monitored models, newest first")
def models(request: Request, principal: Principal = Depends(viewer)):
    return _json(state_of(request).store.list_models())


@router.get("/overview", summary="Volume and flagged share over the window, active thresholds, lag, jobs, alerts")
def overview(
    request: Request,
    model: int | None = Query(None, description="Model id; default the newest."),
    window_hours: str | None = Query(None, description="Length of the window ending now, in hours."),
    principal: Principal = Depends(viewer),
):
    state = state_of(request)
    hours = parse_window_hours("window_hours", window_hours, state.settings.web.window_hours)
    with state.store.reads():
        try:
            chosen = views.pick_model(state.store.list_models(), _model_param(request))
        except views.NotFound as error:
            raise _not_found(error) from None
        data = views.overview(state.store, chosen, hours, state.consumer_lag)
    body = jsonable_encoder(data)
    body["buckets"] = [
        {"start": b.start.isoformat(), "total": b.total, "flagged": b.flagged, "flagged_share": b.rate}
        for b in data.buckets
    ]
    return JSONResponse(body)


@router.get("/flagged", summary="The flagged queue: filter, sort, one page")
def flagged(
    request: Request,
    model: int | None = Query(None, description="Model id; default the newest."),
    since: str | None = Query(None, description="Scored at or after (ISO 8601; UTC when no offset)."),
    until: str | None = Query(None, description="Scored before (ISO 8601)."),
    predicted_class: str | None = Query(None, alias="class", description="Predicted class index."),
    labelled: str | None = Query(None, description="any, no, yes, ID or OOD (the current label)."),
    min_score: str | None = Query(None, description="Lowest thresholded score."),
    max_score: str | None = Query(None, description="Highest thresholded score."),
    sort: str | None = Query(None, description="time_desc (default), time_asc, score_desc, score_asc."),
    page: str | None = Query(None, description="Page number, from 1."),
    per_page: str | None = Query(None, description="Samples per page, 1 to 200."),
    ids: str | None = Query(None, description="Comma-separated sample ids (at most 500): these samples only, "
                            "flagged or not (e.g. a shadow evaluation's newly_flagged or cleared)."),
    principal: Principal = Depends(viewer),
):
    state = state_of(request)
    filters = parse_queue_filters(request.query_params, state.settings.web.page_size)
    with state.store.reads():
        try:
            chosen = views.pick_model(state.store.list_models(), _model_param(request))
        except views.NotFound as error:
            raise _not_found(error) from None
        if chosen is None:
            result = QueuePage(items=[], total=0, page=filters.page, per_page=filters.per_page)
        else:
            result = state.store.flagged_queue(chosen.id, filters)
    return _json({
        "model": chosen.id if chosen else None, "total": result.total, "page": result.page,
        "per_page": result.per_page, "pages": result.pages, "items": result.items,
    })


@router.get("/samples/{sample_id}", summary="A sample: every indicator with its percentile in the window, labels")
def sample(request: Request, sample_id: RowId, principal: Principal = Depends(viewer)):
    state = state_of(request)
    try:
        with state.store.reads():
            report = views.sample_report(state.store, sample_id, state.settings.web.window_hours)
    except views.NotFound as error:
        raise _not_found(error) from None
    body = jsonable_encoder(report.sample)
    body["label"] = report.sample.label
    body["image_url"] = f"/api/samples/{sample_id}/image" if report.sample.image_content_type else None
    body["indicators"] = jsonable_encoder(report.readings)
    body["window"] = {"start": report.window_start.isoformat(), "end": report.window_end.isoformat()}
    body["threshold"] = jsonable_encoder(report.threshold)
    body["judged_by"] = jsonable_encoder(report.judged_by)  # which threshold judged it: global or its class's
    return JSONResponse(body)


@router.get(
    "/samples/{sample_id}/image",
    summary="The sample's stored image bytes, with their stored content type",
    response_class=JSONResponse,
    responses={200: {"content": {"image/*": {}}}},
)
def sample_image(request: Request, sample_id: RowId, principal: Principal = Depends(viewer)):
    store = state_of(request).store
    image = store.get_image(sample_id)
    if image is None:
        exists = store.sample_exists(sample_id)
        detail = f"sample {sample_id} has no stored image" if exists else f"sample {sample_id} not found"
        raise HTTPException(status_code=404, detail=detail)
    return image_response(image)


@router.get("/samples/{sample_id}/labels", summary="The sample's label history, oldest first")
def sample_labels(request: Request, sample_id: RowId, principal: Principal = Depends(viewer)):
    store = state_of(request).store
    if not store.sample_exists(sample_id):
        raise HTTPException(status_code=404, detail=f"sample {sample_id} not found")
    history = store.label_history(sample_id)
    return _json({"sample_id": sample_id, "current_label": history[-1].label if history else None, "history": history})


def _label_answer(sample_id: int, history) -> JSONResponse:
    return _json({"sample_id": sample_id, "current_label": history[-1].label if history else None, "history": history})


async def label_body(request: Request, principal: Principal = Depends(labeller)) -> LabelIn:
    """The label request's body, read only once the caller is known to be a labeller (FastAPI reads
    a declared body before any dependency runs, so an anonymous caller's body would be parsed
    first). The body is at most MAX_REQUEST_BYTES (monitor.asgi.BodyLimit)."""
    raw = await request.body()
    try:
        return LabelIn.model_validate_json(raw or b"null")
    except ValidationError as error:
        raise RequestValidationError([{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors()]) from None


@router.post("/samples/{sample_id}/labels", status_code=201, summary="Label a sample ID or OOD (labeller)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": LabelIn.model_json_schema()}}}})
def add_label(request: Request, sample_id: RowId, principal: Principal = Depends(labeller),
              body: LabelIn = Depends(label_body)):
    store = state_of(request).store
    if not store.sample_exists(sample_id):
        raise HTTPException(status_code=404, detail=f"sample {sample_id} not found")
    store.add_label(sample_id, body.label, principal.name, body.note)
    history = store.label_history(sample_id)
    response = _label_answer(sample_id, history)
    response.status_code = 201
    return response


@router.post("/samples/{sample_id}/labels/undo", summary="Undo the latest label by restoring the one before (labeller)")
def undo_label(request: Request, sample_id: RowId, principal: Principal = Depends(labeller)):
    store = state_of(request).store
    if not store.sample_exists(sample_id):
        raise HTTPException(status_code=404, detail=f"sample {sample_id} not found")
    try:
        history = store.undo_label(sample_id, principal.name, principal.can("admin"))
    except LabelConflict as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
    return _label_answer(sample_id, history)


@router.get("/thresholds", summary="Score histogram of the window with the fitted thresholds, and their history")
def thresholds(
    request: Request,
    model: int | None = Query(None, description="Model id; default the newest."),
    indicator: str | None = Query(None, description="Indicator to plot; default that of the active threshold."),
    window_hours: str | None = Query(None, description="Length of the window ending now, in hours."),
    bins: str | None = Query(None, description="Histogram bins, 5 to 200 (default 40)."),
    predicted_class: str | None = Query(None, description="A predicted class index: the histogram of that "
                                        "class's samples; default (or 'global') every sample."),
    principal: Principal = Depends(viewer),
):
    state = state_of(request)
    hours = parse_window_hours("window_hours", window_hours, state.settings.web.window_hours)
    chosen_indicator = parse_indicator("indicator", indicator, "") or None
    bin_count = parse_int("bins", bins or None, minimum=5, maximum=200) or 40
    chosen_class = parse_predicted_class("predicted_class", predicted_class)
    with state.store.reads():
        try:
            chosen = views.pick_model(state.store.list_models(), _model_param(request))
        except views.NotFound as error:
            raise _not_found(error) from None
        data = views.thresholds_view(state.store, chosen, chosen_indicator, state.settings.stream.indicator, hours,
                                     bin_count, predicted_class=chosen_class)
    body = jsonable_encoder(data)
    body["classes"] = [{"predicted_class": index, "label": label} for index, label in data.classes]
    for row in body["history"]:
        stored = next(r for r in data.history if r.id == row["id"])
        row["labels_used"] = views.labels_used(stored)
        row["judges_selected_class_by"] = data.chart_value(stored)  # the threshold the selected class is judged by
    waiting = state.store.waiting_proposal(chosen.id, data.indicator, now=utc_now()) if chosen else None
    body["proposal"] = proposal_json(waiting) if waiting else None
    return JSONResponse(body)


@router.get("/proposals", summary="Threshold proposals, newest first, with their shadow evaluations")
def list_proposals(
    request: Request,
    model: int | None = Query(None, description="Model id; default every model."),
    limit: str | None = Query(None, description="At most this many, 1 to 500 (default 50)."),
    principal: Principal = Depends(viewer),
):
    count, _ = parse_page_window(limit, None)
    rows = state_of(request).store.list_proposals(_model_param(request), limit=count)
    return JSONResponse([proposal_json(row) for row in rows])


@router.get("/proposals/{proposal_id}", summary="One threshold proposal with its shadow evaluation and decision")
def get_proposal(request: Request, proposal_id: RowId, principal: Principal = Depends(viewer)):
    found = state_of(request).store.get_proposal(proposal_id)
    if found is None:
        raise HTTPException(status_code=404, detail=f"proposal {proposal_id} not found")
    return JSONResponse(proposal_json(found))


def decide_or_answer(request: Request, proposal_id: int, decision: str, principal: Principal,
                     note: str | None) -> ProposalRow:
    """Decide a proposal for an admin: 404 when there is none, 409 when it no longer waits."""
    store = state_of(request).store
    if store.get_proposal(proposal_id) is None:
        raise HTTPException(status_code=404, detail=f"proposal {proposal_id} not found")
    try:
        return proposals.decide(store, proposal_id, decision, by=principal.name, note=note, now=utc_now())
    except ProposalConflict as conflict:
        raise HTTPException(status_code=409, detail=str(conflict)) from None


_DECISION_BODY = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": DecisionIn.model_json_schema()}}}}


@router.post("/proposals/{proposal_id}/approve", openapi_extra=_DECISION_BODY,
             summary="Approve a waiting proposal: its threshold becomes active (admin)")
def approve_proposal(request: Request, proposal_id: RowId, principal: Principal = Depends(admin),
                     body: DecisionIn = Depends(_body_after(admin, DecisionIn))):
    return JSONResponse(proposal_json(decide_or_answer(request, proposal_id, "approve", principal, body.note)))


@router.post("/proposals/{proposal_id}/reject", openapi_extra=_DECISION_BODY,
             summary="Reject a waiting proposal: its threshold never becomes active (admin)")
def reject_proposal(request: Request, proposal_id: RowId, principal: Principal = Depends(admin),
                    body: DecisionIn = Depends(_body_after(admin, DecisionIn))):
    return JSONResponse(proposal_json(decide_or_answer(request, proposal_id, "reject", principal, body.note)))


def what_if_evaluation(request: Request, model_id: int, indicator: str, hours: float, value: float | None,
                       method: str | None, predicted_class: int | None = None):
    """(candidate, how it was found, the stored form of its shadow evaluation) on the window of
    `hours` ending now; nothing is saved. MonitorError (InputError, NotEnoughData) says why not."""
    state = state_of(request)
    if (value is None) == (method is None):
        raise InputError("give either a threshold value or a method, not both")
    window = proposals.Window(since=utc_now() - timedelta(hours=hours))
    if value is not None and predicted_class is not None:
        candidate = proposals.with_class_threshold(state.store, model_id, indicator, predicted_class, value)
        how = f"typed in for predicted class {predicted_class}: {value:.6g}, every other threshold as active"
    elif value is not None:
        candidate, how = ClassThresholds(value), f"typed in: {value:.6g}"
    else:
        candidate, how = proposals.what_if_fit(state.store, state.settings, model_id, indicator, method, window)
    evaluation = proposals.what_if(state.store, model_id, indicator, candidate, window)
    return candidate, how, proposals.document(evaluation)


@router.post("/thresholds/what-if", summary="What a threshold value or method would change; nothing is saved (admin)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": WhatIfIn.model_json_schema()}}}})
def what_if(request: Request, principal: Principal = Depends(admin),
            body: WhatIfIn = Depends(_body_after(admin, WhatIfIn))):
    state = state_of(request)
    try:
        chosen = views.pick_model(state.store.list_models(), body.model)
    except views.NotFound as error:
        raise _not_found(error) from None
    if chosen is None:
        raise HTTPException(status_code=404, detail="no model has been scored yet")
    indicator = parse_indicator("indicator", body.indicator, "") or state.settings.stream.indicator
    hours = body.window_hours or state.settings.web.window_hours
    try:
        candidate, how, evaluation = what_if_evaluation(request, chosen.id, indicator, hours, body.value, body.method,
                                                        body.predicted_class)
    except MonitorError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return JSONResponse({"model": chosen.id, "indicator": indicator, "window_hours": hours,
                         "candidate": candidate.to_dict(), "how": how, "evaluation": evaluation.to_json()})


@router.get("/alerts", summary="Alerts, newest first")
def alerts(
    request: Request,
    limit: str | None = Query(None, description="At most this many, 1 to 500 (default 50)."),
    offset: str | None = Query(None, description="Skip this many."),
    principal: Principal = Depends(viewer),
):
    count, skip = parse_page_window(limit, offset)
    return _json(state_of(request).store.list_alerts(limit=count, offset=skip))


@router.get("/jobs", summary="Recent runs of the scheduled jobs, newest first")
def jobs(
    request: Request,
    limit: str | None = Query(None, description="At most this many, 1 to 500 (default 50)."),
    principal: Principal = Depends(viewer),
):
    count, _ = parse_page_window(limit, None)
    return _json(state_of(request).store.list_job_runs(limit=count))


@router.get("/reports", summary="Drift reports, newest first")
def reports(
    request: Request,
    limit: str | None = Query(None, description="At most this many, 1 to 500 (default 50)."),
    offset: str | None = Query(None, description="Skip this many."),
    principal: Principal = Depends(viewer),
):
    count, skip = parse_page_window(limit, offset)
    rows = state_of(request).store.list_reports(limit=count, offset=skip)
    # The server-side path stays private: clients fetch the file by report id.
    return _json([
        {**{k: v for k, v in jsonable_encoder(row).items() if k != "file_path"},
         "file_url": f"/api/reports/{row.id}/file" if row.file_path else None}
        for row in rows
    ])


def report_file_response(request: Request, report_id: int):
    """The report's file as the job wrote it: the path comes from the database row, never the request."""
    report = state_of(request).store.get_report(report_id)
    if report is None:
        raise HTTPException(status_code=404, detail=f"report {report_id} not found")
    path = views.report_file(report, Path(state_of(request).settings.jobs.report_dir))
    if path is None:
        raise HTTPException(status_code=404, detail=f"report {report_id} has no file in the report directory "
                                                    "(removed, never written, or elsewhere)")
    media_type = REPORT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    headers = {"Content-Security-Policy": REPORT_CSP, "Cache-Control": "private, no-cache"}
    if media_type == "application/octet-stream":
        headers["Content-Disposition"] = f'attachment; filename="report-{report_id}{path.suffix[:10]}"'
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/reports/{report_id}/file", summary="The drift report's file as produced by the job")
def report_file(request: Request, report_id: RowId, principal: Principal = Depends(viewer)):
    return report_file_response(request, report_id)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, principal: Principal = Depends(viewer)):
    return request.app.openapi()

