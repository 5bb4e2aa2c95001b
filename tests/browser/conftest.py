"""Browser fixtures: Debian's Chromium driven by Playwright, and the operator app served by uvicorn
in a thread on a free port over a seeded SQLite store."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.services import free_port, port_open, wait_until

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed at /usr/bin/chromium: run deploy/local/bootstrap.sh --test")
    # playwright cannot download its own browser here: drive Debian's, headless, without its sandbox (root).
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "headless": True,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"],
    }


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@contextmanager
def served(app):
    """The app served for real over HTTP by uvicorn in a thread on a free port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started and port_open("127.0.0.1", port), 20, f"the web app on port {port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_app(tmp_path_factory):
    """(base URL, store, seeded data) of the app served for real over HTTP."""
    from monitor.store import Store, connect, upgrade
    from monitor.web import create_app
    from tests.web_data import seed_store, web_settings

    workdir = tmp_path_factory.mktemp("web-live")
    engine = connect(f"sqlite:///{workdir / 'monitor.db'}")
    upgrade(engine)
    store = Store(engine)
    seeded = seed_store(store, workdir / "reports")
    app = create_app(web_settings(workdir / "reports"), store, consumer_lag=lambda: 17)
    try:
        with served(app) as base:
            yield base, store, seeded
    finally:
        store.close()
