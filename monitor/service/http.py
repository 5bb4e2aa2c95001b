"""What operators and orchestrators see of every role: /healthz, /readyz and /metrics, served by
uvicorn on a thread of a process that does not score (the supervisor, the web role, the scheduler).

A role hands in a `Probes` object:

- `live() -> (bool, detail)`: /healthz, 200 while the process does its work; 503 when it is stuck
  (a liveness probe: restart it).
- `ready() -> (bool, problems)`: /readyz, 200 when it can do its work; 503 with the problems
  otherwise (a readiness probe, and load balancers).
- `metrics_text() -> bytes`: /metrics, Prometheus text format (docs/daemon.md, "Operability").
- `details() -> dict`: more fields of the /readyz document (e.g. the workers).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol

from monitor.asgi import HeadAsGet


class Probes(Protocol):
    def live(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, list[str]]: ...

    def metrics_text(self) -> bytes: ...

    def details(self) -> dict[str, Any]: ...


def probes_router(probes: Probes):
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse, Response
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    router = APIRouter(tags=["operability"])

    @router.get("/healthz")
    def healthz():
        alive, detail = probes.live()
        return JSONResponse({"status": "ok" if alive else "stalled", "detail": detail},
                            status_code=200 if alive else 503)

    @router.get("/readyz")
    def readyz():
        ready, problems = probes.ready()
        return JSONResponse({"status": "ready" if ready else "not ready", "problems": problems,
                             **probes.details()}, status_code=200 if ready else 503)

    @router.get("/metrics")
    def metrics():
        return Response(probes.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return router


def build_http_app(probes: Probes, settings: Any = None, store: Any = None,
                   consumer_lag: Callable[[], int | None] | None = None):
    """The operator web app with the probes mounted, when `settings` and `store` are given; else
    the probes alone. Returns (app, whether the web app is in it)."""
    from fastapi import FastAPI

    router = probes_router(probes)
    if settings is not None and store is not None:
        # Imported here so the probe-only roles never load the web app; an import error is a defect
        # to see, not a reason to serve the probes alone.
        from monitor.web import create_app

        return create_app(settings, store, extra_routers=[router], consumer_lag=consumer_lag), True
    app = FastAPI(title="ood-monitor", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(HeadAsGet)
    app.include_router(router)
    return app, False


class HttpServer:
    """uvicorn on a background thread; `stop()` shuts it down."""

    def __init__(self, app: Any, host: str, port: int, *, proxy_headers: bool = False, log_level: str = "warning",
                 access_log: bool = False):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                     lifespan="off", proxy_headers=proxy_headers)
        self.server = uvicorn.Server(self.config)
        self.server.install_signal_handlers = lambda: None  # the process's owner handles SIGTERM/SIGINT
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 10.0) -> "HttpServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise OSError(f"the HTTP server could not start on {self.config.host}:{self.config.port} "
                              "(port in use?); set [web] port or [stream] http = false")
            if time.monotonic() > deadline:
                raise OSError(f"the HTTP server did not start within {timeout:.0f} s")
            time.sleep(0.02)  # polling the server's own started flag
        return self

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                return sock.getsockname()[1]
        return self.config.port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
