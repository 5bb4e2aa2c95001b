"""Runs of the scheduled jobs and the lock that lets one replica at a time run a job.

Mixed into `monitor.store.Store`, which supplies the engine and the transactions.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update

from monitor.clock import utc_now
from monitor.errors import InputError
from monitor.store.locks import job_lock
from monitor.store.models import JOB_OUTCOMES, JobRun
from monitor.store.records import JobRunRow


class RunsAggregate:
    """The job run bookkeeping of `monitor.store.Store`."""

    def job_lock(self, job_name: str):
        """Context manager: try to take the lock of `job_name` without waiting; yields whether this
        process holds it (monitor.store.locks; one replica at a time runs a scheduled job)."""
        return job_lock(self.engine, job_name)

    def start_job_run(self, job: str, *, started_at: datetime | None = None, runner: str | None = None) -> JobRunRow:
        if not job:
            raise InputError("job run: job must be named")
        with self._writing() as connection:
            row = connection.execute(
                insert(JobRun).returning(*JobRun.__table__.c),
                [{"job": job, "started_at": started_at or utc_now(), "outcome": "running", "error": None,
                  "runner": runner[:255] if runner else None}],
            ).one()
        return JobRunRow(**row._mapping)

    def finish_job_run(
        self, run_id: int, outcome: str, *, error: str | None = None, finished_at: datetime | None = None
    ) -> JobRunRow:
        if outcome not in JOB_OUTCOMES or outcome == "running":
            raise InputError(f"job run: outcome {outcome!r} is not one of ok, failed, skipped")
        with self._writing() as connection:
            row = connection.execute(
                update(JobRun)
                .where(JobRun.id == run_id)
                .values(outcome=outcome, error=error, finished_at=finished_at or utc_now())
                .returning(*JobRun.__table__.c)
            ).first()
            if row is None:
                raise InputError(f"job run: no run with id {run_id}")
        return JobRunRow(**row._mapping)

    def list_job_runs(self, *, job: str | None = None, limit: int = 50) -> list[JobRunRow]:
        """Runs of the scheduled jobs (or of one), the latest started first."""
        statement = select(JobRun.__table__)
        if job is not None:
            statement = statement.where(JobRun.job == job)
        statement = statement.order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(limit)
        with self._reading() as connection:
            return [JobRunRow(**row._mapping) for row in connection.execute(statement)]

    def close_interrupted_runs(self, job: str, reason: str, now: datetime) -> list[JobRunRow]:
        """Mark as failed the runs of `job` still 'running'. Call only while holding the job's lock:
        then no live process is running it, so those runs died with their process."""
        with self._writing() as connection:
            rows = connection.execute(
                update(JobRun)
                .where(JobRun.job == job, JobRun.outcome == "running")
                .values(outcome="failed", error=reason, finished_at=now)
                .returning(*JobRun.__table__.c)
            ).all()
        return sorted((JobRunRow(**row._mapping) for row in rows), key=lambda run: run.id)

    def run_started_since(self, job: str, moment: datetime) -> bool:
        """Whether a run of `job` started at or after `moment` (another replica ran this slot)."""
        statement = select(JobRun.id).where(JobRun.job == job, JobRun.started_at >= moment).limit(1)
        with self._reading() as connection:
            return connection.execute(statement).first() is not None
