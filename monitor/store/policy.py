"""The policy: a model's threshold for an indicator, the own thresholds of predicted classes it
carries, and the 1C-Sum weights the scores it judges were made with. A threshold and its
weights are stored in one transaction and read in one query (`active_policy`), so a policy is
seen whole or not at all; the threshold's id is the policy's version, recorded on every score
row it judged. Activating a threshold (a fit, an approved proposal) makes its
weights the model's active ones in the same transaction.

Mixed into `monitor.store.Store`, which supplies the engine and the transactions.
"""

from __future__ import annotations

from sqlalchemy import Connection, insert, select, update

from monitor.clock import utc_now
from monitor.errors import InputError
from monitor.store.models import MonitoredModel, SummaryWeights, Threshold, indicator_column
from monitor.store.payloads import SummaryWeightsDocument
from monitor.store.records import Policy, ThresholdRecord, ThresholdRow


def threshold_rows(connection: Connection, *conditions, limit: int | None = None) -> list[ThresholdRow]:
    """The one read of threshold rows: those matching, newest first."""
    statement = (select(Threshold.__table__).where(*conditions)
                 .order_by(Threshold.created_at.desc(), Threshold.id.desc()).limit(limit))
    return [ThresholdRow(**row._mapping) for row in connection.execute(statement)]


def _active_weights_id(connection: Connection, model_id: int) -> int | None:
    """The model's weights of its latest activated policy: those a threshold stored without weights keeps."""
    return connection.execute(select(SummaryWeights.id).where(*_active_weights_of(model_id))).scalar()


def _active_weights_of(model_id: int) -> tuple:
    return SummaryWeights.model_id == model_id, SummaryWeights.active.is_(True)


class PolicyAggregate:
    """The threshold and 1C-Sum weight reads and writes of `monitor.store.Store`."""

    def add_threshold(self, record: ThresholdRecord, *, weights: SummaryWeightsDocument | None = None,
                      activate: bool = True) -> ThresholdRow:
        """Store a threshold (with the own thresholds of predicted classes the record carries) and
        the 1C-Sum weights that go with it, in one transaction: they are one policy (see
        `active_policy`). Without `weights` the threshold keeps the model's active weights, the
        ones the scores it was fitted on were made with. With `activate` the new policy replaces
        the active one atomically."""
        row = {
            "model_id": record.model_id,
            "indicator": record.indicator,
            "method": record.method,
            "parameters": record.parameters,
            "window_start": record.window_start,
            "window_end": record.window_end,
            "counts": record.counts,
            "value": float(record.value),
            "active": False,
            "created_at": utc_now(),
            "fitted_by": record.fitted_by,
            "class_thresholds": record.class_thresholds,
        }
        if weights is not None and not isinstance(weights, SummaryWeightsDocument):
            raise InputError(f"threshold: weights must be a SummaryWeightsDocument, got {type(weights).__name__}")
        with self._writing() as connection:
            self._lock_model(connection, record.model_id)
            if weights is None:
                row["summary_weights_id"] = _active_weights_id(connection, record.model_id)
            else:
                row["summary_weights_id"] = connection.execute(
                    insert(SummaryWeights).returning(SummaryWeights.id),
                    [{"model_id": record.model_id, "weights": weights, "created_at": row["created_at"],
                      "active": False}],
                ).scalar_one()
            threshold_id = connection.execute(insert(Threshold).returning(Threshold.id), [row]).scalar_one()
            if activate:
                self._activate(connection, threshold_id, record.model_id, record.indicator, row["summary_weights_id"])
            return threshold_rows(connection, Threshold.id == threshold_id)[0]

    def _lock_model(self, connection: Connection, model_id: int) -> None:
        # Serialises activations per model on PostgreSQL; SQLite's write lock already does.
        statement = select(MonitoredModel.id).where(MonitoredModel.id == model_id)
        if self.dialect == "postgresql":
            statement = statement.with_for_update()
        if connection.execute(statement).first() is None:
            raise InputError(f"no monitored model with id {model_id}")

    @staticmethod
    def _activate(connection: Connection, threshold_id: int, model_id: int, indicator: str,
                  weights_id: int | None) -> None:
        """The threshold becomes the active one of its model and indicator, and its weights (if
        any) the model's active weights, which a threshold stored later without weights keeps."""
        connection.execute(
            update(Threshold)
            .where(Threshold.model_id == model_id, Threshold.indicator == indicator, Threshold.active.is_(True))
            .values(active=False)
        )
        connection.execute(update(Threshold).where(Threshold.id == threshold_id).values(active=True))
        if weights_id is not None:
            connection.execute(
                update(SummaryWeights)
                .where(*_active_weights_of(model_id), SummaryWeights.id != weights_id)
                .values(active=False)
            )
            connection.execute(update(SummaryWeights).where(SummaryWeights.id == weights_id).values(active=True))

    def active_threshold(self, model_id: int, indicator: str) -> ThresholdRow | None:
        indicator_column(indicator)
        with self._reading() as connection:
            found = threshold_rows(connection, Threshold.model_id == model_id, Threshold.indicator == indicator,
                                Threshold.active.is_(True), limit=1)
        return found[0] if found else None

    def get_threshold(self, threshold_id: int) -> ThresholdRow | None:
        with self._reading() as connection:
            found = threshold_rows(connection, Threshold.id == threshold_id)
        return found[0] if found else None

    def active_thresholds(self, model_id: int) -> list[ThresholdRow]:
        """The active threshold of each indicator of a model, by indicator name."""
        with self._reading() as connection:
            found = threshold_rows(connection, Threshold.model_id == model_id, Threshold.active.is_(True))
        return sorted(found, key=lambda threshold: threshold.indicator)

    def threshold_history(self, model_id: int, indicator: str | None = None, *, limit: int = 200) -> list[ThresholdRow]:
        """Thresholds of a model (optionally one indicator), newest first."""
        conditions = [Threshold.model_id == model_id]
        if indicator is not None:
            indicator_column(indicator)
            conditions.append(Threshold.indicator == indicator)
        with self._reading() as connection:
            return threshold_rows(connection, *conditions, limit=limit)

    def active_policy(self, model_id: int, indicator: str) -> Policy | None:
        """The active threshold of (model, indicator) with its own thresholds of predicted classes
        and its 1C-Sum weights, in one query: a policy written in one transaction is read whole or
        not at all. None: no active threshold."""
        indicator_column(indicator)
        return self._policy(Threshold.model_id == model_id, Threshold.indicator == indicator,
                            Threshold.active.is_(True))

    def policy(self, version: int) -> Policy | None:
        """The policy of a stored threshold, active or not (a score row's `threshold_id` names the
        version that judged it). None: no such threshold."""
        return self._policy(Threshold.id == version)

    def _policy(self, *conditions) -> Policy | None:
        statement = (
            select(Threshold.id, Threshold.model_id, Threshold.indicator, Threshold.value,
                   Threshold.class_thresholds, Threshold.summary_weights_id, SummaryWeights.weights)
            .select_from(Threshold.__table__.outerjoin(
                SummaryWeights.__table__, SummaryWeights.id == Threshold.summary_weights_id))
            .where(*conditions)
        )
        with self._reading() as connection:
            row = connection.execute(statement).first()
        if row is None:
            return None
        return Policy(version=row.id, model_id=row.model_id, indicator=row.indicator, threshold=float(row.value),
                      summary_weights_id=row.summary_weights_id,
                      weights=row.weights.weights if row.weights is not None else None,
                      per_class=row.class_thresholds.per_class() if row.class_thresholds is not None else {})
