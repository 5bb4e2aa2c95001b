"""The commands of the roles: `ood-monitor run` (all-in-one, or `--role scoring`), `ood-monitor web`
and `ood-monitor scheduler`. Each is its own process (docs/daemon.md, "Processes and roles")."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

ROLES = ("all", "scoring")


def run_command(args: argparse.Namespace) -> int:
    """`ood-monitor run [--role all|scoring] [--workers N]`."""
    from monitor.service.supervisor import Supervisor, auto_workers
    from monitor.stream.daemon import configure_logging

    settings = args.settings  # the CLI ran the start-up checks (monitor.preflight)
    configure_logging(settings.logging, getattr(args, "verbose", False))
    if getattr(args, "workers", None) is not None:
        settings.stream.workers = args.workers
    workers = settings.stream.workers or auto_workers(settings)
    all_in_one = getattr(args, "role", "all") == "all"
    supervisor = Supervisor(settings, workers=workers, scheduler=all_in_one and settings.jobs.enabled,
                            web=all_in_one)
    code = supervisor.run()
    # Its workers are gone and what it owns is closed: only the interpreter's teardown is left, which
    # on a loaded machine took 1.3 to 4 s (the web stack's modules) and would overrun the grace.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def scheduler_command(args: argparse.Namespace) -> int:
    """`ood-monitor scheduler`: the jobs alone, with their probes, until SIGTERM or SIGINT."""
    from monitor.service.scheduler import run_scheduler
    from monitor.stream.daemon import configure_logging

    settings = args.settings
    configure_logging(settings.logging, getattr(args, "verbose", False))
    return run_scheduler(settings)


class WebProbes:
    """/healthz of the web role: the process serves; /readyz: and its database answers."""

    def __init__(self, store):
        from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

        self.store = store
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def live(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, list[str]]:
        from monitor.service.scheduler import database_problem

        problem = database_problem(self.store)
        return (False, [problem]) if problem else (True, [])

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def details(self) -> dict:
        return {}


def web_command(args: argparse.Namespace) -> int:
    """`ood-monitor web`: the operator app and its probes; `ood-monitor web hash-password`: a config entry."""
    if getattr(args, "web_action", None) == "hash-password":
        from monitor.web.cli import hash_password_command

        return hash_password_command(args)
    from monitor.preflight import preflight
    from monitor.service.database import open_store
    from monitor.service.http import HttpServer, build_http_app

    settings = preflight(args.config, database=True)
    host = args.host or settings.web.host
    port = settings.web.port if args.port is None else args.port
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    store = open_store(settings)
    try:
        app, _ = build_http_app(WebProbes(store), settings, store)
        http = HttpServer(app, host, port, proxy_headers=True, log_level=settings.logging.level.lower(),
                          access_log=True).start()
        print(f"ood-monitor web: serving on http://{host}:{http.port}/ (Ctrl-C to stop)", file=sys.stderr)
        try:
            stop.wait()
        finally:
            http.stop()
    finally:
        store.close()
    return 0
