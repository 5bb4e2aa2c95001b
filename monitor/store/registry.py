"""The registry of monitored models (a name and weights fingerprint with its preprocessing) and
of the 1C-Sum noise calibration of each weights fingerprint.

Mixed into `monitor.store.Store`, which supplies the engine and the transactions.
"""

from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy import select

from monitor.clock import utc_now
from monitor.errors import InputError
from monitor.store.models import Calibration, MonitoredModel
from monitor.store.payloads import ModelPreprocessing, NoiseCalibration
from monitor.store.records import ModelRow


class RegistryAggregate:
    """The model and calibration reads and writes of `monitor.store.Store`."""

    def register_model(self, name: str, fingerprint: str, preprocessing: Mapping[str, Any]) -> ModelRow:
        """The row of this model and weights, created on first use (safe under concurrency).
        `preprocessing`: monitor.classifiers.Preprocessing.to_dict(), checked by ModelPreprocessing."""
        if not name or not fingerprint:
            raise InputError("model: name and weights fingerprint must be non-empty")
        row = {"name": name, "fingerprint": fingerprint, "preprocessing": ModelPreprocessing.from_json(preprocessing),
               "created_at": utc_now()}
        with self._writing() as connection:
            connection.execute(self._insert(MonitoredModel).on_conflict_do_nothing(), [row])
            found = connection.execute(
                select(MonitoredModel.__table__).where(
                    MonitoredModel.name == name, MonitoredModel.fingerprint == fingerprint
                )
            ).one()
        return ModelRow(**found._mapping)

    def get_model(self, model_id: int) -> ModelRow | None:
        with self._reading() as connection:
            found = connection.execute(select(MonitoredModel.__table__).where(MonitoredModel.id == model_id)).first()
        return ModelRow(**found._mapping) if found else None

    def list_models(self) -> list[ModelRow]:
        """Every monitored model, newest first (the pages show the newest unless asked)."""
        statement = select(MonitoredModel.__table__).order_by(MonitoredModel.created_at.desc(),
                                                              MonitoredModel.id.desc())
        with self._reading() as connection:
            rows = connection.execute(statement).all()
        return [ModelRow(**row._mapping) for row in rows]

    def save_calibration(self, fingerprint: str, stats: Mapping[str, Any]) -> None:
        """Store (or replace) the 1C-Sum noise statistics of a weights fingerprint.
        `stats`: monitor.indicators.Calibration.to_dict(), checked by NoiseCalibration."""
        statement = self._insert(Calibration).values(
            fingerprint=fingerprint, stats=NoiseCalibration.from_json(stats), created_at=utc_now())
        statement = statement.on_conflict_do_update(
            index_elements=[Calibration.fingerprint],
            set_={"stats": statement.excluded.stats, "created_at": statement.excluded.created_at},
        )
        with self._writing() as connection:
            connection.execute(statement)

    def get_calibration(self, fingerprint: str) -> NoiseCalibration | None:
        with self._reading() as connection:
            return connection.execute(
                select(Calibration.stats).where(Calibration.fingerprint == fingerprint)
            ).scalar_one_or_none()

