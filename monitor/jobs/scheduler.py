"""The scheduler: APScheduler 3 running the jobs of `[jobs]`, one replica at a time per job.

Every replica runs the same scheduler. Fire times are aligned on a fixed anchor
(2000-01-01T00:00Z + k * interval), so all replicas agree on them. A replica that fires takes
the job's lock (Store.job_lock, monitor.store.locks); if another replica holds it, or already
started a run at or after this fire time, it does nothing. So each fire time yields one run, and when a
replica dies (its lock freed by the database or the kernel) the others carry on at the next
fire time. Missed fire times are coalesced into one run.

A job run is a `job_runs` row: running -> ok | skipped (with the reason) | failed (with the
error, alerted as `job_failed`). A failure never propagates: the next fire time retries, and
the scheduler keeps running.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.errors import MonitorError
from monitor.clock import iso_utc
from monitor.jobs.alerts import AlertPublisher, AlertSink
from monitor.store.payloads import JobFailedAlert

log = logging.getLogger(__name__)

# Fire times of every replica are anchor + k * interval, so replicas agree on them.
SCHEDULE_ANCHOR = datetime(2000, 1, 1, tzinfo=timezone.utc)
INTERRUPTED = "interrupted: the process running it stopped before it finished"


@dataclass(frozen=True)
class JobOutcome:
    """What a job reports: 'ok', or 'skipped' with the reason (e.g. too few samples)."""

    outcome: str
    detail: str = ""

    @classmethod
    def ok(cls, detail: str = "") -> "JobOutcome":
        return cls("ok", detail)

    @classmethod
    def skipped(cls, reason: str) -> "JobOutcome":
        return cls("skipped", reason)


@dataclass
class JobContext:
    """Everything a job needs; built once per scheduler (or per CLI command)."""

    settings: Any  # monitor.settings.Settings
    store: Any  # monitor.store Store
    alerts: AlertSink
    runner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    progress: bool = False
    now: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    # (job, outcome, detail) after each scheduled run of this process; detail: what the job reported
    on_run: Callable[[str, str, str], None] | None = None


@dataclass(frozen=True)
class JobRunResult:
    run_id: int
    job: str
    outcome: str
    detail: str


def _job_functions() -> dict[str, Callable[[JobContext], JobOutcome]]:
    from monitor.jobs.drift_report import drift_report_job
    from monitor.jobs.rate_alert import rate_alert_job
    from monitor.jobs.refit import refit_job
    from monitor.jobs.retention import retention_job

    return {"refit": refit_job, "rate_alert": rate_alert_job, "drift_report": drift_report_job,
            "retention": retention_job}


JOB_NAMES = ("refit", "rate_alert", "drift_report", "retention")


def job_intervals(jobs_settings: Any) -> dict[str, float]:
    """Job name -> seconds between runs, for the jobs the settings enable (interval > 0)."""
    intervals = {
        "refit": float(jobs_settings.refit_every_s),
        "rate_alert": float(jobs_settings.rate_every_s),
        "drift_report": float(jobs_settings.report_every_hours) * 3600.0,
        "retention": float(jobs_settings.retention_every_s),
    }
    return {name: seconds for name, seconds in intervals.items() if seconds > 0}


def latest_fire_time(now: datetime, every_s: float) -> datetime:
    """The most recent aligned fire time at or before `now`."""
    elapsed = (now - SCHEDULE_ANCHOR).total_seconds()
    return SCHEDULE_ANCHOR + timedelta(seconds=math.floor(elapsed / every_s + 1e-9) * every_s)


def run_job(context: JobContext, name: str, *, scheduled_for: datetime | None = None,
            function: Callable[[JobContext], JobOutcome] | None = None) -> JobRunResult | None:
    """Run job `name` once under its lock and record it; None when another replica has it.

    With `scheduled_for` (scheduled runs), a run that another replica already started at or
    after that time counts as this one. Exceptions of the job are recorded, alerted and
    swallowed; the result says 'failed'. `function` replaces the job's own (the CLI passes
    its options this way).
    """
    function = function or _job_functions()[name]
    with context.store.job_lock(name) as held:
        if not held:
            log.info("job %s: another process is running it; nothing to do here", name)
            return None
        for interrupted in context.store.close_interrupted_runs(name, INTERRUPTED, context.now()):
            _alert_failure(context, name, interrupted.id, interrupted.started_at, INTERRUPTED)
        if scheduled_for is not None and context.store.run_started_since(name, scheduled_for):
            log.debug("job %s: the run due at %s was made by another process", name, iso_utc(scheduled_for))
            return None
        started_at = context.now()
        run_id = context.store.start_job_run(name, started_at=started_at, runner=context.runner).id
        log.info("job %s: run #%d started by %s", name, run_id, context.runner)
        try:
            outcome = function(context)
        except Exception as error:  # noqa: BLE001 - a failed job is recorded and retried, never fatal
            message = _describe(error)
            log.error("job %s: run #%d failed: %s", name, run_id, message,
                      exc_info=not isinstance(error, MonitorError))
            context.store.finish_job_run(run_id, "failed", error=message, finished_at=context.now())
            _alert_failure(context, name, run_id, started_at, message)
            return JobRunResult(run_id, name, "failed", message)
        # The error column holds the reason of a skipped run; an ok run's detail goes to the log.
        reason = outcome.detail or None if outcome.outcome != "ok" else None
        context.store.finish_job_run(run_id, outcome.outcome, error=reason, finished_at=context.now())
        log.info("job %s: run #%d %s%s", name, run_id, outcome.outcome,
                 f" ({outcome.detail})" if outcome.detail else "")
        return JobRunResult(run_id, name, outcome.outcome, outcome.detail)


def _describe(error: BaseException) -> str:
    if isinstance(error, MonitorError):
        return str(error)
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return f"{type(error).__name__}: {error}{where}"


def _alert_failure(context: JobContext, name: str, run_id: int, started_at: datetime, message: str) -> None:
    try:
        context.alerts.raise_alert(JobFailedAlert(
            job=name, run_id=run_id, error=message, started_at=iso_utc(started_at),
            failed_at=iso_utc(context.now()), runner=context.runner,
        ))
    except Exception:  # noqa: BLE001 - alerting about a failure must not fail in turn
        log.exception("job %s: could not raise the job_failed alert for run #%d", name, run_id)


def _run_scheduled(context: JobContext, name: str, every_s: float) -> None:
    """APScheduler's entry point: never raises (a raising job would only be logged by APScheduler)."""
    try:
        result = run_job(context, name, scheduled_for=latest_fire_time(context.now(), every_s))
    except Exception:  # noqa: BLE001 - e.g. the database is unreachable: log and retry at the next fire
        log.exception("job %s: could not run (will retry at the next fire time)", name)
        outcome, detail = "failed", "could not run (see the log); retried at the next fire time"
    else:
        # None: another process ran it
        outcome, detail = (result.outcome, result.detail) if result is not None else (None, "")
    if outcome is not None and context.on_run is not None:
        try:
            context.on_run(name, outcome, detail)
        except Exception:  # noqa: BLE001 - an observer's failure must not stop the schedule
            log.exception("job %s: the run observer failed", name)


class SchedulerHandle:
    """A started scheduler; `shutdown()` stops firing and waits for running jobs."""

    def __init__(self, scheduler: BackgroundScheduler, context: JobContext, intervals: dict[str, float]):
        self.scheduler = scheduler
        self.context = context
        self.intervals = intervals
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def next_fire_times(self) -> dict[str, datetime | None]:
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=wait)
                log.info("scheduler stopped")


def start_scheduler(settings: Any, store: Any, publisher: AlertPublisher | None,
                    *, progress: bool = False,
                    on_run: Callable[[str, str, str], None] | None = None) -> SchedulerHandle:
    """Start the jobs of `settings.jobs` in background threads; returns a handle with `shutdown()`.

    Used by the scheduler role (`ood-monitor scheduler`, and its process inside `ood-monitor run`);
    `on_run(job, outcome, detail)` is told of every run this process made (its metrics; the demo's
    terminal lines).
    """
    context = JobContext(settings=settings, store=store, alerts=AlertSink(store, publisher), progress=progress,
                         on_run=on_run)
    intervals = job_intervals(settings.jobs)
    scheduler = BackgroundScheduler(
        timezone=timezone.utc,
        # One thread per job at most: a slow report does not delay the rate alert.
        executors={"default": ThreadPoolExecutor(max_workers=max(1, len(intervals)))},
    )
    for name, every_s in intervals.items():
        scheduler.add_job(
            _run_scheduled,
            IntervalTrigger(seconds=every_s, start_date=SCHEDULE_ANCHOR, timezone=timezone.utc),
            args=(context, name, every_s),
            id=name,
            name=f"ood-monitor {name}",
            coalesce=True,  # a backlog of missed fire times becomes one run
            max_instances=1,
            misfire_grace_time=max(1, int(every_s)),  # a run late by up to one interval still happens
            replace_existing=True,
        )
    scheduler.start()
    log.info("scheduler started as %s: %s", context.runner,
             ", ".join(f"{name} every {every_s:g} s" for name, every_s in intervals.items()) or "no jobs enabled")
    return SchedulerHandle(scheduler, context, intervals)
