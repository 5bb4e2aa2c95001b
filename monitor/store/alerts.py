"""Alerts: stored first, then published (monitor.jobs.alerts drains the unpublished ones).

Mixed into `monitor.store.Store`, which supplies the engine and the transactions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from sqlalchemy import insert, select, update

from monitor.clock import utc_now
from monitor.store.models import Alert
from monitor.store.payloads import AlertDocument, OodRateAlert
from monitor.store.records import AlertRow


class AlertsAggregate:
    """The alert reads and writes of `monitor.store.Store`."""

    def add_alert(self, document: AlertDocument, *, created_at: datetime | None = None) -> AlertRow:
        with self._writing() as connection:
            row = connection.execute(
                insert(Alert).returning(*Alert.__table__.c),
                [{"kind": document.kind, "payload": document, "created_at": created_at or utc_now(),
                  "published_at": None}],
            ).one()
        return AlertRow(**row._mapping)

    def list_alerts(
        self,
        *,
        unpublished_only: bool = False,
        kind: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        oldest_first: bool = False,
    ) -> list[AlertRow]:
        """Alerts, newest first by creation time (or in the order they were stored, as a publisher
        drains them); `limit` and `offset` page through them."""
        statement = select(Alert.__table__)
        if unpublished_only:
            statement = statement.where(Alert.published_at.is_(None))
        if kind is not None:
            statement = statement.where(Alert.kind == kind)
        if since is not None:
            statement = statement.where(Alert.created_at >= since)
        order = (Alert.id.asc(),) if oldest_first else (Alert.created_at.desc(), Alert.id.desc())
        statement = statement.order_by(*order).limit(limit).offset(offset)
        with self._reading() as connection:
            return [AlertRow(**row._mapping) for row in connection.execute(statement)]

    def latest_rate_alert(self, model_id: int) -> OodRateAlert | None:
        """The newest ood_rate alert of a model (its episode's state). The model is matched in Python:
        JSON operators differ between SQLite and PostgreSQL; the scan stops at the first match."""
        statement = select(Alert.payload).where(Alert.kind == OodRateAlert.KIND).order_by(Alert.id.desc())
        with self._reading() as connection:
            for document in connection.execution_options(yield_per=200).execute(statement).scalars():
                if document.payload.model_id == model_id:
                    return document.payload
        return None

    def mark_alerts_published(self, alert_ids: Iterable[int], *, published_at: datetime | None = None) -> int:
        """Set published_at on alerts not yet published; returns how many changed."""
        ids = list(alert_ids)
        if not ids:
            return 0
        with self._writing() as connection:
            result = connection.execute(
                update(Alert)
                .where(Alert.id.in_(ids), Alert.published_at.is_(None))
                .values(published_at=published_at or utc_now())
            )
            return int(result.rowcount)
