"""Retention on schedule: the store deletes what `[retention]` no longer keeps, in bounded chunks."""

from __future__ import annotations

from typing import Any

from monitor.jobs.scheduler import JobContext, JobOutcome
from monitor.store.records import RetentionPolicy

DAY_S = 86400.0


def retention_policy(retention_settings: Any) -> RetentionPolicy:
    """[retention] -> the store's policy: score rows (with their labels) and rejects after
    `score_days`, image bytes after `image_days`, and beyond the newest `max_samples` score rows
    and `max_images` images when set; alerts and job runs live as long as scores."""
    score_age = retention_settings.score_days * DAY_S
    return RetentionPolicy(
        image_max_age_s=retention_settings.image_days * DAY_S,
        image_max_count=retention_settings.max_images,
        sample_max_age_s=score_age,
        sample_max_count=retention_settings.max_samples,
        reject_max_age_s=score_age,
        alert_max_age_s=score_age,
        job_run_max_age_s=score_age,
    )


def retention_job(context: JobContext) -> JobOutcome:
    result = context.store.purge(retention_policy(context.settings.retention), now=context.now())
    return JobOutcome.ok(
        f"deleted {result.samples} samples, {result.images} images, {result.rejects} rejects, "
        f"{result.alerts} alerts, {result.job_runs} job runs"
    )
