"""Threshold proposals: a fitted threshold that waits for an admin, with its shadow evaluation.

A proposal points at a threshold (and 1C-Sum weights, when re-fitted) stored inactive. Its
status is `waiting` until an admin approves it (the threshold and its weights become active in
the same transaction), rejects it, or it expires; a newer proposal for the same model and
indicator expires the one that waited. Decisions keep who, when and a note. The samples a
shadow evaluation judges are read with the other windows (`monitor.store.windows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from sqlalchemy import Connection, insert, select, update

from monitor.errors import InputError
from monitor.clock import iso_utc
from monitor.store.models import (
    Alert,
    PROPOSAL_STATUSES,
    Threshold,
    ThresholdProposal,
)
from monitor.store.payloads import AlertDocument, ProposalEvaluation, ThresholdActivatedAlert
from monitor.store.policy import threshold_rows

WAITING, APPROVED, REJECTED, EXPIRED = PROPOSAL_STATUSES
DECISIONS = {"approve": APPROVED, "reject": REJECTED}
MAX_NOTE_LENGTH = 2000


class ProposalConflict(InputError):
    """The proposal cannot be decided: it was decided already, or it expired."""


# --- records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalRecord:
    """A proposal to store: the inactive threshold (and weights) it would activate, and why."""

    model_id: int
    indicator: str
    threshold_id: int
    evaluation: ProposalEvaluation
    expires_at: datetime
    proposed_by: str
    summary_weights_id: int | None = None


@dataclass(frozen=True)
class ProposalRow:
    id: int
    model_id: int
    indicator: str
    threshold_id: int
    summary_weights_id: int | None
    status: str
    evaluation: ProposalEvaluation
    proposed_by: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_note: str | None
    value: float
    method: str

    def status_at(self, now: datetime) -> str:
        """The status as it stands at `now`: a waiting proposal past its time is expired."""
        return EXPIRED if self.status == WAITING and self.expires_at <= now else self.status


# --- the aggregate ---------------------------------------------------------------------------------

def _proposal_query():
    return select(ThresholdProposal.__table__, Threshold.value, Threshold.method).join(
        Threshold, Threshold.id == ThresholdProposal.threshold_id)


def _row(found) -> ProposalRow:
    return ProposalRow(**found._mapping)


class ProposalsAggregate:
    """The proposal queries of `monitor.store.Store` (which supplies the engine and transactions)."""

    def add_proposal(self, record: ProposalRecord, *, now: datetime) -> ProposalRow:
        """Store a waiting proposal; one that still waited for the same model and indicator expires."""
        with self._writing() as connection:
            self._lock_model(connection, record.model_id)
            found = threshold_rows(connection, Threshold.id == record.threshold_id)
            threshold = found[0] if found else None
            if threshold is None or threshold.model_id != record.model_id or threshold.indicator != record.indicator:
                raise InputError(f"proposal: threshold #{record.threshold_id} is not one of model "
                                 f"{record.model_id}'s {record.indicator} thresholds")
            connection.execute(
                update(ThresholdProposal)
                .where(ThresholdProposal.model_id == record.model_id, ThresholdProposal.indicator == record.indicator,
                       ThresholdProposal.status == WAITING)
                .values(status=EXPIRED, decided_at=now, decided_by=record.proposed_by,
                        decision_note="replaced by a newer proposal")
            )
            proposal_id = connection.execute(insert(ThresholdProposal).returning(ThresholdProposal.id), [{
                "model_id": record.model_id, "indicator": record.indicator, "threshold_id": record.threshold_id,
                "summary_weights_id": record.summary_weights_id, "status": WAITING,
                "evaluation": record.evaluation, "proposed_by": record.proposed_by,
                "created_at": now, "expires_at": record.expires_at,
            }]).scalar_one()
            return self._proposal(connection, proposal_id)

    def decide_proposal(self, proposal_id: int, decision: str, *, by: str, note: str | None,
                        now: datetime) -> ProposalRow:
        """Approve (its threshold and weights become active, and a `threshold_activated` alert row is
        kept, in this one transaction) or reject a waiting proposal. ProposalConflict when it was decided already or has expired (it is then
        marked expired); InputError when there is no such proposal."""
        if decision not in DECISIONS:
            raise InputError(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}")
        if note is not None and len(note) > MAX_NOTE_LENGTH:
            raise InputError(f"note: at most {MAX_NOTE_LENGTH} characters")
        with self._writing() as connection:
            found = connection.execute(select(ThresholdProposal.model_id).where(
                ThresholdProposal.id == proposal_id)).first()
            if found is None:
                raise InputError(f"proposal: no proposal with id {proposal_id}")
            self._lock_model(connection, found.model_id)  # serialises decisions and activations per model
            proposal = self._proposal(connection, proposal_id)
            if proposal.status_at(now) != WAITING:
                if proposal.status == WAITING:
                    self._expire(connection, [proposal_id], now)
                    status = EXPIRED
                else:
                    status = proposal.status
                conflict = ProposalConflict(f"proposal #{proposal_id} is {status}"
                                            + (f" (by {proposal.decided_by})" if proposal.decided_by else "")
                                            + "; only a waiting proposal can be approved or rejected")
            else:
                conflict = None
                if decision == "approve":
                    active = threshold_rows(connection, Threshold.model_id == proposal.model_id,
                                            Threshold.indicator == proposal.indicator, Threshold.active.is_(True))
                    previous = active[0] if active else None
                    # The proposed threshold comes with the weights stored with it: one policy.
                    proposed = threshold_rows(connection, Threshold.id == proposal.threshold_id)[0]
                    classes = proposed.class_thresholds
                    self._activate(connection, proposal.threshold_id, proposal.model_id, proposal.indicator,
                                   proposed.summary_weights_id)
                connection.execute(update(ThresholdProposal).where(ThresholdProposal.id == proposal_id).values(
                    status=DECISIONS[decision], decided_at=now, decided_by=by, decision_note=note or None))
                if decision == "approve":  # the alert row commits with the activation; redelivery publishes it
                    activated = ThresholdActivatedAlert(
                        model_id=proposal.model_id, indicator=proposal.indicator, proposal_id=proposal.id,
                        threshold_id=proposal.threshold_id, value=proposal.value, method=proposal.method,
                        previous_threshold_id=previous.id if previous else None,
                        previous_value=previous.value if previous else None,
                        summary_weights_id=proposal.summary_weights_id, approved_by=by, note=note or None,
                        class_thresholds=dict(classes.thresholds) if classes is not None else None)
                    connection.execute(insert(Alert), [{
                        "kind": activated.KIND, "payload": AlertDocument(activated, iso_utc(now)),
                        "created_at": now, "published_at": None}])
                proposal = self._proposal(connection, proposal_id)
        if conflict is not None:  # raised after the commit: an expiry found here is kept
            raise conflict
        return proposal

    def expire_proposals(self, *, now: datetime) -> list[ProposalRow]:
        """Mark every waiting proposal past its time expired; returns them."""
        with self._writing() as connection:
            ids = connection.execute(select(ThresholdProposal.id).where(
                ThresholdProposal.status == WAITING, ThresholdProposal.expires_at <= now)).scalars().all()
            self._expire(connection, ids, now)
            return [self._proposal(connection, proposal_id) for proposal_id in ids]

    @staticmethod
    def _expire(connection: Connection, ids: Sequence[int], now: datetime) -> None:
        if ids:
            connection.execute(update(ThresholdProposal).where(ThresholdProposal.id.in_(list(ids))).values(
                status=EXPIRED, decided_at=now, decided_by="expiry", decision_note=None))

    @staticmethod
    def _proposal(connection: Connection, proposal_id: int) -> ProposalRow:
        return _row(connection.execute(_proposal_query().where(ThresholdProposal.id == proposal_id)).one())

    def get_proposal(self, proposal_id: int) -> ProposalRow | None:
        with self._reading() as connection:
            found = connection.execute(_proposal_query().where(ThresholdProposal.id == proposal_id)).first()
        return _row(found) if found else None

    def waiting_proposal(self, model_id: int, indicator: str, *, now: datetime) -> ProposalRow | None:
        """The proposal that waits for a decision on this model and indicator, if any (and not expired)."""
        with self._reading() as connection:
            found = connection.execute(_proposal_query().where(
                ThresholdProposal.model_id == model_id, ThresholdProposal.indicator == indicator,
                ThresholdProposal.status == WAITING, ThresholdProposal.expires_at > now)).first()
        return _row(found) if found else None

    def list_proposals(self, model_id: int | None = None, *, limit: int = 50) -> list[ProposalRow]:
        """Proposals, newest first."""
        statement = _proposal_query()
        if model_id is not None:
            statement = statement.where(ThresholdProposal.model_id == model_id)
        statement = statement.order_by(ThresholdProposal.id.desc()).limit(limit)
        with self._reading() as connection:
            return [_row(found) for found in connection.execute(statement)]
