"""Start-up checks, run by each command before it does any work (docs/configuration.md, "Start-up checks").

First everything that needs no network, reported together: the settings (keys, types, ranges,
[web] accounts and tokens, files named), the store URL and, for the commands that load the model,
the weights file. Then the database and the Kafka brokers, reached at the same time, each within
its configured timeout. Every failure is a `MonitorError` (exit status 2) naming what is wrong.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

from monitor.errors import ConfigError, MonitorError
from monitor.settings import Settings, invalid_configuration, read_config_file, settings_with_problems


def preflight(config: str | os.PathLike | None = None, *, model: bool = False, database: bool = True,
              kafka: bool = False, environ: Mapping[str, str] | None = None) -> Settings:
    """The checked settings of a command: `model`, `database`, `kafka` say what the command needs."""
    environ = os.environ if environ is None else environ
    data, source = read_config_file(config, environ)
    settings, problems = settings_with_problems(data, environ, source)
    if database:
        problems += _store_url_problems(settings.store.url)
    if model and settings.model.weights is not None and not any(p.startswith("[model] weights") for p in problems):
        problems += _weights_problems(settings.model.weights)
    if problems:
        raise invalid_configuration(problems)
    checks: list[Callable[[], None]] = []
    if database:
        checks.append(lambda: reach_database(settings))
    if kafka:
        from monitor.outbound.kafka import reach_brokers

        checks.append(lambda: reach_brokers(settings.kafka))
    unreachable = _run_together(checks)
    if unreachable:
        raise MonitorError("\n  ".join(["cannot start:", *unreachable]) if len(unreachable) > 1 else unreachable[0])
    return settings


def reach_database(settings: Settings) -> None:
    """Open and close one connection within [store] connect_timeout_s, or a MonitorError naming the host."""
    from monitor.store import connect

    store = settings.store
    try:
        connect(store.url, connect_timeout_s=store.connect_timeout_s).dispose()
    except ConfigError:
        raise
    except MonitorError as error:
        raise MonitorError(f"{error} ([store] url, connect_timeout_s = {store.connect_timeout_s})") from None


def _store_url_problems(url: str) -> list[str]:
    from monitor.store.engine import parse_url

    try:
        parse_url(url)
    except ConfigError as error:
        return [f"[store] url: {str(error).removeprefix('store.url: ')}"]
    return []


def _weights_problems(path: str) -> list[str]:
    """Only for the commands that load the model: a web or jobs host need not have the file."""
    from pathlib import Path

    if not Path(path).is_file():
        return [f"[model] weights: no such file {path}"]
    from monitor.classifiers import read_state_dict
    from monitor.errors import ModelError

    try:
        read_state_dict(path)
    except ModelError as error:
        return [f"[model] weights: {error}"]
    return []


def _run_together(checks: list[Callable[[], None]]) -> list[str]:
    """Run the checks at once (each bounded by its own timeout); the message of each that failed."""
    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="preflight") as pool:
        futures = [pool.submit(check) for check in checks]
    failures: list[str] = []
    for future in futures:
        error: Any = future.exception()
        if isinstance(error, MonitorError):
            failures.append(str(error))
        elif error is not None:
            raise error
    return failures
