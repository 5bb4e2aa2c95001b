"""Alerts raised by the scheduled jobs: stored as a row of `alerts`, then published.

The row comes first so that an alert is never lost: if the publisher fails (broker down),
the row stays with `published_at` unset and the failure is logged; the job itself does not
fail because the alerts topic is unreachable. The rate-alert job redelivers such rows once
they are a minute old, so delivery is at least once (`alert_id` identifies a repeat).
Payload schemas: docs/jobs.md.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

log = logging.getLogger(__name__)

THRESHOLD_CHANGED = "threshold_changed"
OOD_RATE = "ood_rate"
DRIFT = "drift"
JOB_FAILED = "job_failed"
ALERT_KINDS = (THRESHOLD_CHANGED, OOD_RATE, DRIFT, JOB_FAILED)
SCHEMA_VERSION = 1

# Unpublished alerts younger than this may still be in flight in another job: left alone.
REDELIVERY_AFTER = timedelta(seconds=60)

COMMON_FIELDS = ("schema_version", "kind", "created_at", "alert_id")
"""Keys of every job alert document (alert_id is null only when the database was unreachable)."""

PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    THRESHOLD_CHANGED: ("model_id", "indicator", "threshold_id", "value", "method", "parameters",
                        "previous_threshold_id", "previous_value", "window", "counts", "summary_weights_id",
                        "explanation"),
    OOD_RATE: ("state", "model_id", "episode_started_at", "window", "samples", "flagged", "observed_share",
               "expected_share", "p_value", "alpha", "test"),
    DRIFT: ("report_id", "model_id", "period", "reference", "drifted", "test", "correction", "alpha",
            "min_effect", "file_path"),
    JOB_FAILED: ("job", "run_id", "error", "started_at", "failed_at", "runner"),
}
"""The keys each kind adds (docs/jobs.md describes them); a test holds the jobs to this list."""


class AlertPublisher(Protocol):
    def publish_alert(self, kind: str, payload: dict[str, Any]) -> None: ...


class NoPublisher:
    """Used when no alerts topic is configured: alerts are stored and logged only."""

    def publish_alert(self, kind: str, payload: dict[str, Any]) -> None:
        log.info("alert %s (no publisher configured): %s", kind, payload)


def utc_iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


class AlertSink:
    """Store the alert as a row, then publish it; a row that could not be published keeps
    `published_at` unset. If the database itself is down, the alert is still published."""

    def __init__(self, store: Any, publisher: AlertPublisher | None) -> None:
        self.store = store
        self.publisher = publisher or NoPublisher()

    def raise_alert(self, kind: str, payload: dict[str, Any]) -> int | None:
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r}; expected one of {', '.join(ALERT_KINDS)}")
        created_at = datetime.now(timezone.utc)
        document = {"schema_version": SCHEMA_VERSION, "kind": kind, "created_at": utc_iso(created_at), **payload}
        try:
            alert_id: int | None = self.store.add_alert(kind, document, created_at=created_at).id
        except Exception as error:  # noqa: BLE001 - the database is down: publishing still tells operators
            log.error("alert %s could not be stored (%s); publishing it anyway", kind, error)
            alert_id = None
        try:
            self.publisher.publish_alert(kind, {**document, "alert_id": alert_id})
        except Exception as error:  # noqa: BLE001 - a dead broker must not fail the job; the row stays unpublished
            log.error("alert %s #%s stored but not published: %s", kind, alert_id, error)
            return alert_id
        if alert_id is not None:
            self.store.mark_alerts_published([alert_id])
        return alert_id

    def redeliver(self, now: datetime, limit: int = 100) -> int:
        """Publish stored job alerts that never left (oldest first); stops at the first failure."""
        delivered = 0
        for row in self.store.list_alerts(unpublished_only=True, oldest_first=True, limit=limit):
            if row.kind not in ALERT_KINDS or row.created_at > now - REDELIVERY_AFTER:
                continue
            try:
                self.publisher.publish_alert(row.kind, {**row.payload, "alert_id": row.id})
            except Exception as error:  # noqa: BLE001 - still unreachable: try again at the next run
                log.warning("alert redelivery stopped, %s #%d still unpublished: %s", row.kind, row.id, error)
                break
            self.store.mark_alerts_published([row.id])
            delivered += 1
        if delivered:
            log.info("redelivered %d stored alert(s)", delivered)
        return delivered
