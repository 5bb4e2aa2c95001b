"""The operator web app: `create_app(settings, store)` returns a FastAPI application.

It is served alone by `ood-monitor web` and inside `ood-monitor run`, which passes its own
operability routes (/healthz, /readyz, /metrics) as `extra_routers` and a `consumer_lag`
callable. Everything else needs a login: a session cookie for the pages, a bearer token
(or the page's session plus its CSRF header) for /api.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Callable, Iterable

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from monitor.asgi import BodyLimit, HeadAsGet
from monitor.errors import ConfigError
from monitor.settings import SESSION_SECRET_MIN_LENGTH
from monitor.web.auth import (
    CSRF_HEADER,
    ROLES,
    SESSION_COOKIE,
    Authenticator,
    Credential,
    FailureLimiter,
    Principal,
    csrf_matches,
    read_credentials,
)
from monitor.web.filters import FilterError, validation_failure
from monitor.web.images import BROWSER_TYPES, NPY_TYPES

log = logging.getLogger(__name__)
HERE = Path(__file__).parent

# Pages load only their own stylesheet and script; charts are inline SVG; images come from this app.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Drift reports are files written by the jobs: shown sandboxed, with their inline styles and plots.
REPORT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"


def parse_credentials(entries: Iterable[str], key: str) -> list[Credential]:
    """'NAME:ROLE:HASH' entries of [web] accounts / tokens -> credentials; ConfigError naming each bad entry
    (the settings refuse them first: this guards settings built in code)."""
    credentials, problems = read_credentials(entries, key)
    if problems:
        raise ConfigError("; ".join(problems), problems=problems)
    return credentials


def _as_store(store):
    from monitor.store import Store

    if isinstance(store, Store):
        return store
    raise TypeError(f"create_app: store must be a monitor.store.Store, got {type(store).__name__}")


class WebState:
    """What the routes share: settings, the store (every read and write of the database), the
    authenticator, templates."""

    def __init__(self, settings, store, consumer_lag: Callable[[], int | None] | None):
        web = settings.web
        self.settings = settings
        self.store = store
        self.consumer_lag = consumer_lag
        secret = web.session_secret
        if secret is None:
            log.warning(
                "[web] session_secret is not set: sessions are signed with a random key and end when this "
                "process stops (set MONITOR_WEB__SESSION_SECRET for restarts and replicas)"
            )
            secret = secrets.token_urlsafe(32)
        elif len(secret) < SESSION_SECRET_MIN_LENGTH:
            raise ConfigError(f"[web] session_secret: must be at least {SESSION_SECRET_MIN_LENGTH} characters")
        accounts = parse_credentials(web.accounts, "accounts")
        tokens = parse_credentials(web.tokens, "tokens")
        if not accounts and not tokens:
            log.warning("[web] no accounts or tokens are configured: nobody can log in "
                        "(see `ood-monitor web hash-password` and docs/web.md)")
        self.auth = Authenticator(accounts, tokens, secret.encode(), web.session_lifetime_s)
        self.failures = FailureLimiter(web.max_failed_logins)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.filters["dt"] = _format_datetime
        env.filters["num"] = _format_number
        env.globals["ROLES"] = ROLES

    # --- who is asking ---------------------------------------------------------------------------
    def principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            client = client_address(request)
            token = header[7:].strip()
            # A token already proven good passes even while guesses from the same address (say,
            # behind one proxy) are throttled: guessing must not lock out working clients.
            wait = 0.0 if self.auth.is_known_token(token) else self.failures.retry_after(client)
            if wait:
                raise HTTPException(status_code=429, detail=f"too many unknown tokens from {client}; retry in {wait:.0f} s",
                                    headers={"Retry-After": str(int(wait) + 1)})
            principal = self.auth.principal_for_token(token)
            if principal is None:
                self.failures.failed(client)
            return principal
        return self.auth.principal_for_session(request.cookies.get(SESSION_COOKIE))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _format_datetime(value) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_number(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def state_of(request: Request) -> WebState:
    return request.app.state.web


def api_principal(request: Request, role: str) -> Principal:
    """The caller of an API route with at least `role`; 401 without credentials, 403 below the role.

    A browser session may call the API too (the queue's keyboard labelling does), but its
    state-changing calls must carry the session's CSRF token in the X-CSRF-Token header.
    """
    principal = state_of(request).principal(request)
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="authentication required: send 'Authorization: Bearer <token>' or log in",
            headers={"WWW-Authenticate": 'Bearer realm="ood-monitor"'},
        )
    if not principal.can(role):
        raise HTTPException(status_code=403, detail=f"{principal.name} is a {principal.role}; this needs the {role} role")
    if principal.via == "session" and request.method not in ("GET", "HEAD", "OPTIONS"):
        if not csrf_matches(principal.csrf, request.headers.get(CSRF_HEADER)):
            raise HTTPException(status_code=403, detail=f"missing or wrong {CSRF_HEADER} header for a session request")
    return principal


def image_response(image) -> Response:
    """Stored bytes with their stored type; never sniffed, never a page of their own."""
    content_type = image.content_type if image.content_type in BROWSER_TYPES | NPY_TYPES else "application/octet-stream"
    return Response(
        content=image.data,
        media_type=content_type,
        headers={
            "Cache-Control": "private, max-age=3600",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition": "inline",
        },
    )


MAX_REQUEST_BYTES = 65_536
"""Largest request body accepted (a label with its note, a login form, with ample margin); a larger
one is refused with 413 as its bytes arrive, whether or not it declares its length."""


def create_app(
    settings,
    store,
    extra_routers: Iterable[APIRouter] = (),
    consumer_lag: Callable[[], int | None] | None = None,
) -> FastAPI:
    """The operator app over `store` (a monitor.store.Store).

    `extra_routers` are mounted as given and stay public (health and metrics probes);
    `consumer_lag` returns the consumer group's total lag in messages, or None if unknown.
    """
    from monitor.web import api, pages  # import here: the routers need the helpers above

    state = WebState(settings, _as_store(store), consumer_lag)
    app = FastAPI(
        title="ood-monitor",
        summary="Operators' view of the flagged inputs of a monitored image classifier.",
        version=_version(),
        # Swagger UI would load its script from a CDN: /docs is our own page over /openapi.json,
        # and both need a login like everything else (see monitor.web.api).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.web = state
    # Innermost of the middleware: its early 413 still gets the security headers below. It runs
    # before routing, so no route (and no parser) sees more than MAX_REQUEST_BYTES of a body.
    app.add_middleware(BodyLimit, max_bytes=MAX_REQUEST_BYTES)
    app.add_middleware(HeadAsGet)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        # The server's own time, shown by the browser's developer tools beside the network time.
        response.headers.setdefault("Server-Timing", f"app;dur={(time.perf_counter() - started) * 1000:.1f}")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(FilterError)
    async def bad_filter(request: Request, error: FilterError):
        if request.url.path.startswith("/api/"):
            return JSONResponse(status_code=422, content={"detail": str(error), "parameter": error.parameter})
        return pages.error_page(request, 400, "Bad request", str(error))

    @app.exception_handler(RequestValidationError)
    async def bad_value(request: Request, error: RequestValidationError):
        # FastAPI's own checks (a path id, a typed query parameter, the label body) answer the same
        # documented body as the parsers: {"detail", "parameter"}. A page checks its path before its
        # handler asks for the login: a visitor without one is sent to the login all the same.
        if not request.url.path.startswith("/api/") and state.auth.principal_for_session(
                request.cookies.get(SESSION_COOKIE)) is None:
            return pages.login_redirect(request)
        return await bad_filter(request, validation_failure(error.errors()))

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for router in extra_routers:
        app.include_router(router)
    app.include_router(api.router)
    app.include_router(pages.router)
    pages.install_error_pages(app)
    return app


def _version() -> str:
    from monitor import __version__

    return __version__


__all__ = ["create_app", "parse_credentials"]
