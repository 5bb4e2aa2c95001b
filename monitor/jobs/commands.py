"""The `ood-monitor refit` and `report` subcommands (the scheduler role is in monitor.service)."""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from monitor.errors import InputError, MonitorError
from monitor.clock import iso_utc
from monitor.jobs.alerts import AlertSink
from monitor.jobs.scheduler import JobContext, run_job
from monitor.outbound.alerts import alerts_publisher

log = logging.getLogger(__name__)


def _settings_and_store(args: argparse.Namespace):
    from monitor.preflight import preflight
    from monitor.store import Store

    settings = preflight(getattr(args, "config", None), database=True)
    return settings, Store.open(settings.store.url, upgrade_sqlite=settings.store.auto_upgrade_sqlite,
                                connect_timeout_s=settings.store.connect_timeout_s)


def parse_moment(text: str, option: str) -> datetime:
    """ISO 8601 date/time (UTC when no zone is given) or a relative '24h', '90m', '7d' ago."""
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(timezone.utc) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{option}: {text!r} is neither an ISO date/time (2026-11-27T08:00) "
                         "nor a duration ago such as 24h, 90m or 7d") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def run_refit_command(args: argparse.Namespace) -> int:
    """`ood-monitor refit`: one re-fit now, recorded, locked and alerted like the scheduled job."""
    from monitor.jobs.refit import refit_job

    settings, store = _settings_and_store(args)
    publisher = alerts_publisher(settings)
    try:
        context = JobContext(settings=settings, store=store, alerts=AlertSink(store, publisher), progress=True)
        result = run_job(context, "refit", function=lambda job_context: refit_job(
            job_context, model_id=args.model_id, fitted_by="ood-monitor refit"))
        if result is None:
            raise MonitorError("a re-fit is running in another process right now; try again when it ends")
        if result.outcome == "failed":
            raise MonitorError(f"re-fit failed (run #{result.run_id}): {result.detail}")
        print(f"re-fit run #{result.run_id} {result.outcome}: {result.detail}")
        return 0 if result.outcome == "ok" else 1
    finally:
        _close(publisher)
        store.close()


def _close(publisher: Any) -> None:
    close = getattr(publisher, "close", None)
    if close:
        close()


def run_report_command(args: argparse.Namespace) -> int:
    """`ood-monitor report [--since ...] [--until ...]`: one drift report now."""
    from monitor.jobs.drift_report import make_report

    settings, store = _settings_and_store(args)
    until = parse_moment(args.until, "--until") if args.until else datetime.now(timezone.utc)
    if args.since:
        since = parse_moment(args.since, "--since")
    else:
        since = until - timedelta(hours=settings.jobs.report_every_hours or 24.0)
    if not since < until:
        raise InputError(f"--since: {iso_utc(since)} is not before --until {iso_utc(until)}")
    if args.output_dir:
        settings.jobs.report_dir = args.output_dir
    publisher = alerts_publisher(settings)
    try:
        context = JobContext(settings=settings, store=store, alerts=AlertSink(store, publisher),
                             progress=not args.no_progress)
        result = make_report(context, since, until)
        print(result.message)
        return 0 if result.report else 1
    finally:
        _close(publisher)
        store.close()
