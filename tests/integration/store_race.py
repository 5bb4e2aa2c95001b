"""A child process for the start-up race test: light imports only (no torch), so the processes
reach the fresh database together."""

from __future__ import annotations


def open_fresh_store(url: str, barrier, results) -> None:
    from monitor.service.database import open_store
    from monitor.settings import settings_from_mapping

    settings = settings_from_mapping({"store": {"url": url}})
    barrier.wait(60)  # every process opens the fresh file at the same moment
    try:
        open_store(settings).close()
        results.put("ok")
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put(f"{type(error).__name__}: {error}")
