"""Alerts raised by the scheduled jobs: stored as a row of `alerts`, then published.

The row comes first so that an alert is never lost: if the publisher fails (broker down),
the row stays with `published_at` unset and the failure is logged; the job itself does not
fail because the alerts topic is unreachable. The rate-alert job redelivers such rows once
they are a minute old, so delivery is at least once (`alert_id` identifies a repeat).
Payload schemas: docs/jobs.md.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Protocol

from monitor.clock import iso_utc, utc_now
from monitor.store.payloads import (
    ALERT_KINDS,
    ALERT_PAYLOADS,
    COMMON_ALERT_FIELDS,
    AlertDocument,
    AlertPayload,
    DriftAlert,
    JobFailedAlert,
    OodRateAlert,
    ThresholdActivatedAlert,
    ThresholdChangedAlert,
    ThresholdProposedAlert,
)

log = logging.getLogger(__name__)

THRESHOLD_CHANGED = ThresholdChangedAlert.KIND
OOD_RATE = OodRateAlert.KIND
DRIFT = DriftAlert.KIND
JOB_FAILED = JobFailedAlert.KIND
THRESHOLD_PROPOSED = ThresholdProposedAlert.KIND
THRESHOLD_ACTIVATED = ThresholdActivatedAlert.KIND

# Unpublished alerts younger than this may still be in flight in another job: left alone.
REDELIVERY_AFTER = timedelta(seconds=60)

COMMON_FIELDS = COMMON_ALERT_FIELDS
PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {kind: cls.keys() for kind, cls in ALERT_PAYLOADS.items()}
"""The keys each kind adds (docs/jobs.md describes them): the fields of its payload class."""


class AlertPublisher(Protocol):
    def publish_alert(self, kind: str, payload: dict[str, Any]) -> None: ...


class NoPublisher:
    """Used when no alerts topic is configured: alerts are stored and logged only."""

    def publish_alert(self, kind: str, payload: dict[str, Any]) -> None:
        log.info("alert %s (no publisher configured): %s", kind, payload)


class AlertSink:
    """Store the alert as a row, then publish it; a row that could not be published keeps
    `published_at` unset. If the database itself is down, the alert is still published."""

    def __init__(self, store: Any, publisher: AlertPublisher | None) -> None:
        self.store = store
        self.publisher = publisher or NoPublisher()

    def raise_alert(self, payload: AlertPayload) -> int | None:
        if not isinstance(payload, AlertPayload) or payload.KIND not in ALERT_KINDS:
            raise TypeError(f"expected one of the alert payload classes, got {type(payload).__name__}")
        created_at = utc_now()
        document = AlertDocument(payload, iso_utc(created_at))
        kind = document.kind
        try:
            alert_id: int | None = self.store.add_alert(document, created_at=created_at).id
        except Exception as error:  # noqa: BLE001 - the database is down: publishing still tells operators
            log.error("alert %s could not be stored (%s); publishing it anyway", kind, error)
            alert_id = None
        try:
            self.publisher.publish_alert(kind, document.published(alert_id))
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
                self.publisher.publish_alert(row.kind, row.payload.published(row.id))
            except Exception as error:  # noqa: BLE001 - still unreachable: try again at the next run
                log.warning("alert redelivery stopped, %s #%d still unpublished: %s", row.kind, row.id, error)
                break
            self.store.mark_alerts_published([row.id])
            delivered += 1
        if delivered:
            log.info("redelivered %d stored alert(s)", delivered)
        return delivered
