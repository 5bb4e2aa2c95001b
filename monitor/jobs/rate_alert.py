"""OOD-rate alert: is the flagged share of the recent window significantly above the expected one?

One-sided exact binomial test (scipy.stats.binomtest, alternative 'greater') of the flagged
count among the samples of the last `rate_window_s` seconds against `expected_share`, at
significance `rate_alpha`. Alerts follow episodes, not samples: an `ood_rate` alert with
state "open" when the test first becomes significant, one with state "closed" when it no
longer is. The episode state is the latest `ood_rate` alert of the model (stored rows), so
it survives restarts and moves with the job between replicas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from scipy.stats import binomtest

from monitor.clock import iso_utc
from monitor.jobs.scheduler import JobContext, JobOutcome
from monitor.store.payloads import OodRateAlert, Window
from monitor.store.windows import FlaggedCount

log = logging.getLogger(__name__)

OPEN, CLOSED = "open", "closed"


@dataclass(frozen=True)
class RateCheck:
    model_id: int
    total: int
    flagged: int
    p_value: float | None  # None when too few samples to test
    significant: bool
    transition: str | None  # "open", "closed" or None (no change)


def check_rates(context: JobContext) -> list[RateCheck]:
    """Test every model scored in the window; open or close its episode; alert on transitions."""
    jobs = context.settings.jobs
    end = context.now()
    start = end - timedelta(seconds=jobs.rate_window_s)
    counts = {count.model_id: count for count in context.store.flagged_counts(start, end)}
    # A model whose episode is open but that went quiet must still get its episode closed.
    for model_id in _models_with_open_episode(context):
        counts.setdefault(model_id, FlaggedCount(model_id, 0, 0))
    checks = []
    for model_id, count in sorted(counts.items()):
        p_value = None
        significant = False
        if count.total >= jobs.rate_min_samples:
            p_value = float(binomtest(count.flagged, count.total, jobs.expected_share, alternative="greater").pvalue)
            significant = p_value < jobs.rate_alpha
        episode = context.store.latest_rate_alert(model_id)
        is_open = episode is not None and episode.state == OPEN
        transition = None
        if significant and not is_open:
            transition = OPEN
        elif is_open and not significant:
            transition = CLOSED
        if transition:
            context.alerts.raise_alert(OodRateAlert(
                state=transition, model_id=model_id,
                episode_started_at=iso_utc(end) if transition == OPEN else episode.episode_started_at,
                window=Window(start=iso_utc(start), end=iso_utc(end), seconds=jobs.rate_window_s),
                samples=count.total, flagged=count.flagged,
                observed_share=count.flagged / count.total if count.total else None,
                expected_share=jobs.expected_share, p_value=p_value, alpha=jobs.rate_alpha,
                test="binomial, one-sided (greater)",
            ))
            log.warning("OOD rate episode %s for model %d: %d of %d flagged (expected %.2g%%), p=%s",
                        transition, model_id, count.flagged, count.total, 100 * jobs.expected_share, p_value)
        checks.append(RateCheck(model_id, count.total, count.flagged, p_value, significant, transition))
    return checks


def _models_with_open_episode(context: JobContext) -> list[int]:
    models = []
    for model in context.store.list_models():
        episode = context.store.latest_rate_alert(model.id)
        if episode is not None and episode.state == OPEN:
            models.append(model.id)
    return models


def rate_alert_job(context: JobContext) -> JobOutcome:
    # This job runs every minute under its own lock: it also retries alerts the broker missed.
    redelivered = context.alerts.redeliver(context.now())
    checks = check_rates(context)
    parts = [f"redelivered {redelivered} stored alert(s)"] if redelivered else []
    if not checks:
        return JobOutcome.ok("; ".join(parts + ["no samples in the window"]))
    for check in checks:
        if check.p_value is None:
            parts.append(f"model {check.model_id}: {check.total} samples, too few to test")
        else:
            parts.append(f"model {check.model_id}: {check.flagged}/{check.total} flagged, p={check.p_value:.3g}"
                         + (f", episode {check.transition}" if check.transition else ""))
    return JobOutcome.ok("; ".join(parts))
