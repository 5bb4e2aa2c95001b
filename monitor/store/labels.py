"""Operators' labels: give one, undo the latest, read a sample's history. A label is never
changed or deleted: an undo appends the verdict it restores, so the history keeps both.

Mixed into `monitor.store.Store`, which supplies the engine and the write transaction.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Connection, insert, select

from monitor.clock import utc_now
from monitor.errors import InputError
from monitor.store.engine import StoreError
from monitor.store.models import Label, Sample
from monitor.store.records import LabelRow, check_label


class LabelConflict(StoreError):
    """A label change that cannot be made as asked (nothing to undo, another operator's label); says why."""


def _lock_sample(connection: Connection, sample_id: int) -> None:
    # Locks the sample row on PostgreSQL (SQLite's writer lock already serialises), so a label
    # and an undo of one sample never interleave between reading the history and appending.
    if connection.execute(select(Sample.id).where(Sample.id == sample_id).with_for_update()).first() is None:
        raise InputError(f"label: no sample with id {sample_id}")


def label_rows(connection: Connection, sample_id: int) -> list[LabelRow]:
    rows = connection.execute(select(Label.__table__).where(Label.sample_id == sample_id).order_by(Label.id))
    return [LabelRow(**row._mapping) for row in rows]


class LabelsAggregate:
    """The label reads and writes of `monitor.store.Store`."""

    def add_label(
        self,
        sample_id: int,
        label: str,
        labelled_by: str,
        note: str | None = None,
        labelled_at: datetime | None = None,
    ) -> LabelRow:
        """Record an operator's verdict; earlier labels stay in the history."""
        label, note = check_label(label, note)
        if not labelled_by:
            raise InputError("label: labelled_by must name who labelled the sample")
        row = {
            "sample_id": sample_id,
            "label": label,
            "labelled_by": labelled_by,
            "labelled_at": labelled_at or utc_now(),
            "note": note,
        }
        with self._writing() as connection:
            _lock_sample(connection, sample_id)
            label_id = connection.execute(insert(Label).returning(Label.id), [row]).scalar_one()
        return LabelRow(id=label_id, **{**row, "labelled_at": row["labelled_at"].astimezone(timezone.utc)})

    def undo_label(self, sample_id: int, requested_by: str, may_undo_others: bool) -> list[LabelRow]:
        """Take back the latest label by appending the one it replaced; returns the history.

        Undoing a first label appends a row without a label: the sample is unlabelled again.
        Raises LabelConflict when the sample has no label, or the latest label is someone
        else's and the caller may not undo it; InputError when there is no such sample.
        """
        if not requested_by:
            raise InputError("label: an undo must name who asked for it")
        with self._writing() as connection:
            _lock_sample(connection, sample_id)
            history = label_rows(connection, sample_id)
            if not history:
                raise LabelConflict("the sample has no label to undo")
            latest = history[-1]
            if latest.labelled_by != requested_by and not may_undo_others:
                raise LabelConflict(
                    f"the latest label was given by {latest.labelled_by}; only an admin may undo another operator's label"
                )
            restored = history[-2].label if len(history) > 1 else None  # None: unlabelled again
            connection.execute(insert(Label), [{
                "sample_id": sample_id, "label": restored, "labelled_by": requested_by, "labelled_at": utc_now(),
                "note": f"undo of label #{latest.id} ({latest.label or 'cleared'} by {latest.labelled_by})",
            }])
            return label_rows(connection, sample_id)

    def label_history(self, sample_id: int) -> list[LabelRow]:
        """A sample's labels, oldest first (the last is its current label; None: cleared by an undo)."""
        with self._reading() as connection:
            return label_rows(connection, sample_id)
