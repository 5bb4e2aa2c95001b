"""The schema: SQLAlchemy 2.0 typed declarative models. Alembic (migrations/) owns the DDL.

One wide `samples` table holds a float column per indicator (named by
`monitor.names.COLUMNS`), so windows and percentiles are plain SQL. Every table that the
stream writes to has a unique key on the Kafka source position, which absorbs replays.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    case,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from monitor.errors import InputError
from monitor.names import COLUMNS, INDICATORS
from monitor.store.payloads import (
    AlertDocument,
    ClassThresholdsDocument,
    ModelPreprocessing,
    NoiseCalibration,
    ProposalEvaluation,
    ReportSummary,
    SummaryWeightsDocument,
    ThresholdCounts,
    ThresholdParameters,
)
from monitor.store.types import BigIntegerKey, PayloadDocument, UtcDateTime

# Deterministic constraint names, so migrations can name what they drop on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LABEL_VALUES = ("ID", "OOD")
JOB_OUTCOMES = ("running", "ok", "failed", "skipped")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime()}


class MonitoredModel(Base):
    """A classifier under watch; a new set of weights is a new row (thresholds depend on them)."""

    __tablename__ = "monitored_models"
    __table_args__ = (UniqueConstraint("name", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(128))
    preprocessing: Mapped[ModelPreprocessing] = mapped_column(PayloadDocument(ModelPreprocessing))
    created_at: Mapped[datetime]


class Calibration(Base):
    """1C-Sum noise statistics (per-indicator mean and std), cached per weights fingerprint."""

    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    stats: Mapped[NoiseCalibration] = mapped_column(PayloadDocument(NoiseCalibration))
    created_at: Mapped[datetime]


class Sample(Base):
    """One scored message: where it came from, what the model said, every indicator value."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("source_topic", "source_partition", "source_offset"),
        Index("ix_samples_model_scored", "model_id", "scored_at"),
        Index("ix_samples_model_flagged_scored", "model_id", "flagged", "scored_at"),
        Index("ix_samples_scored_at", "scored_at"),
        Index("ix_samples_sample_key", "sample_key"),
    )

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("monitored_models.id"))
    source_topic: Mapped[str] = mapped_column(String(255))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigIntegerKey)
    sample_key: Mapped[str] = mapped_column(String(255))
    produced_at: Mapped[datetime | None]
    received_at: Mapped[datetime]
    scored_at: Mapped[datetime]
    predicted_class: Mapped[int] = mapped_column(Integer)

    # One column per indicator (monitor.names.COLUMNS); NULL when unavailable for the model.
    mp: Mapped[float | None] = mapped_column(Float)
    h: Mapped[float | None] = mapped_column(Float)
    t1000: Mapped[float | None] = mapped_column(Float)
    odin: Mapped[float | None] = mapped_column(Float)
    norm: Mapped[float | None] = mapped_column(Float)
    norm_p: Mapped[float | None] = mapped_column(Float)
    ang: Mapped[float | None] = mapped_column(Float)
    ang_pp: Mapped[float | None] = mapped_column(Float)
    proj: Mapped[float | None] = mapped_column(Float)
    act: Mapped[float | None] = mapped_column(Float)
    act_p: Mapped[float | None] = mapped_column(Float)
    in_dms: Mapped[float | None] = mapped_column(Float)
    in_dms_aos: Mapped[float | None] = mapped_column(Float)
    in_dss: Mapped[float | None] = mapped_column(Float)
    in_dss_ext: Mapped[float | None] = mapped_column(Float)
    dms: Mapped[float | None] = mapped_column(Float)
    dms_aos: Mapped[float | None] = mapped_column(Float)
    dss: Mapped[float | None] = mapped_column(Float)
    dss_ext: Mapped[float | None] = mapped_column(Float)
    one_c_sum: Mapped[float | None] = mapped_column(Float)

    # The decision: which indicator was thresholded, its value, the verdict and its threshold.
    score: Mapped[float | None] = mapped_column(Float)
    score_indicator: Mapped[str | None] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean)
    threshold_id: Mapped[int | None] = mapped_column(ForeignKey("thresholds.id"))

    image: Mapped[SampleImage | None] = relationship(back_populates="sample", passive_deletes=True)


class SampleImage(Base):
    """Image bytes kept for labelling: every flagged sample, plus a configurable share of the rest."""

    __tablename__ = "sample_images"

    sample_id: Mapped[int] = mapped_column(
        BigIntegerKey, ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True
    )
    content_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    stored_at: Mapped[datetime]

    sample: Mapped[Sample] = relationship(back_populates="image")


class Label(Base):
    """An operator's verdict on a sample. History is kept: the current label is the latest row.

    A row without a label clears the verdict (an undone first label): the sample is unlabelled.
    """

    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint("label IS NULL OR label IN ('ID', 'OOD')", name="label_value"),
        Index("ix_labels_sample_id_id", "sample_id", "id"),
        Index("ix_labels_labelled_at", "labelled_at"),
    )

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True)
    sample_id: Mapped[int] = mapped_column(BigIntegerKey, ForeignKey("samples.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(String(3))
    labelled_by: Mapped[str] = mapped_column(String(200))
    labelled_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(Text)


class Threshold(Base):
    """A fitted threshold; at most one active per model and indicator (partial unique index)."""

    __tablename__ = "thresholds"
    __table_args__ = (
        Index(
            "uq_thresholds_one_active",
            "model_id",
            "indicator",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
        Index("ix_thresholds_model_indicator_created", "model_id", "indicator", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("monitored_models.id"))
    indicator: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[ThresholdParameters] = mapped_column(PayloadDocument(ThresholdParameters))
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    counts: Mapped[ThresholdCounts | None] = mapped_column(
        PayloadDocument(ThresholdCounts, empty_as_none=True), nullable=False)
    value: Mapped[float] = mapped_column(Float)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]
    fitted_by: Mapped[str] = mapped_column(String(200))
    # The 1C-Sum weights stored with it in one transaction: the two are one policy (see Store.active_policy).
    summary_weights_id: Mapped[int | None] = mapped_column(ForeignKey("summary_weights.id"))
    # Own thresholds of predicted classes ([thresholds] per_class); NULL: `value` judges every class.
    class_thresholds: Mapped[ClassThresholdsDocument | None] = mapped_column(
        PayloadDocument(ClassThresholdsDocument, nullable=True), nullable=True)


class SummaryWeights(Base):
    """Label-driven 1C-Sum weights (paper section 5); at most one active set per model."""

    __tablename__ = "summary_weights"
    __table_args__ = (
        Index(
            "uq_summary_weights_one_active",
            "model_id",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("monitored_models.id"))
    weights: Mapped[SummaryWeightsDocument] = mapped_column(PayloadDocument(SummaryWeightsDocument))
    created_at: Mapped[datetime]
    active: Mapped[bool] = mapped_column(Boolean)


class Alert(Base):
    """Something operators must hear about; published_at is set once it left on the alerts topic."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_published_at_id", "published_at", "id"),
        Index("ix_alerts_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[AlertDocument] = mapped_column(PayloadDocument(AlertDocument))
    created_at: Mapped[datetime]
    published_at: Mapped[datetime | None]


class Reject(Base):
    """A message that could not become a model input; stored once per source position."""

    __tablename__ = "rejects"
    __table_args__ = (
        UniqueConstraint("source_topic", "source_partition", "source_offset"),
        Index("ix_rejects_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True)
    source_topic: Mapped[str] = mapped_column(String(255))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigIntegerKey)
    sample_key: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigIntegerKey)
    received_at: Mapped[datetime]


class Report(Base):
    """A drift report produced for a period: its summary figures and where its file lies."""

    __tablename__ = "reports"
    __table_args__ = (Index("ix_reports_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    summary: Mapped[ReportSummary] = mapped_column(PayloadDocument(ReportSummary))
    file_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class JobRun(Base):
    """One run of a scheduled job (refit, drift report, retention)."""

    __tablename__ = "job_runs"
    __table_args__ = (
        CheckConstraint("outcome IN ('running', 'ok', 'failed', 'skipped')", name="outcome_value"),
        Index("ix_job_runs_job_started", "job", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # Which process ran it ("host:pid"): with several daemons on one database, where to look.
    runner: Mapped[str | None] = mapped_column(String(255))


PROPOSAL_STATUSES = ("waiting", "approved", "rejected", "expired")


class ThresholdProposal(Base):
    """A fitted threshold (stored inactive, with its 1C-Sum weights if re-fitted) that waits for an
    admin's decision, with its shadow evaluation; at most one waits per model and indicator."""

    __tablename__ = "threshold_proposals"
    __table_args__ = (
        CheckConstraint("status IN ('waiting', 'approved', 'rejected', 'expired')", name="status_value"),
        Index(
            "uq_threshold_proposals_one_waiting",
            "model_id",
            "indicator",
            unique=True,
            postgresql_where=text("status = 'waiting'"),
            sqlite_where=text("status = 'waiting'"),
        ),
        Index("ix_threshold_proposals_model_created", "model_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("monitored_models.id"))
    indicator: Mapped[str] = mapped_column(String(32))
    threshold_id: Mapped[int] = mapped_column(ForeignKey("thresholds.id"))
    summary_weights_id: Mapped[int | None] = mapped_column(ForeignKey("summary_weights.id"))
    status: Mapped[str] = mapped_column(String(16))
    evaluation: Mapped[ProposalEvaluation] = mapped_column(PayloadDocument(ProposalEvaluation))
    proposed_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decision_note: Mapped[str | None] = mapped_column(Text)


INDICATOR_COLUMNS: dict[str, Any] = {name: Sample.__table__.c[column] for name, column in COLUMNS.items()}
"""Canonical indicator name -> its column of `samples`."""


def indicator_column(name: str) -> Any:
    """The `samples` column of an indicator; InputError naming the known ones for any other name."""
    try:
        return INDICATOR_COLUMNS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown indicator {name!r}; expected one of {', '.join(INDICATORS)}") from None

_declared = {c.name for c in Sample.__table__.c if isinstance(c.type, Float)} - {"score"}
if _declared != set(COLUMNS.values()):  # pragma: no cover - guards a schema edit that forgets a name
    raise RuntimeError(f"samples indicator columns {sorted(_declared)} differ from monitor.names.COLUMNS")


# A sample's current label is its latest label row (by id); None when never labelled or cleared by
# an undo. Every read of it uses one of the two forms below: a subquery to join, or a per-row scalar.


def flagged_count():
    """How many of the selected samples were flagged: the one count the OOD rate reads use."""
    return func.sum(case((Sample.flagged, 1), else_=0))


def current_labels(*conditions):
    """(sample_id, label): the latest label row of each labelled sample (among the samples that
    meet `conditions`, if given), as a subquery to join. label None: the verdict was cleared."""
    latest = select(func.max(Label.id).label("label_id")).group_by(Label.sample_id)
    if conditions:
        latest = latest.join(Sample, Sample.id == Label.sample_id).where(*conditions)
    latest = latest.subquery("latest_label")
    return select(Label.sample_id, Label.label).join(latest, Label.id == latest.c.label_id).subquery("current_label")


def current_label_of_sample():
    """The latest label of the enclosing query's Sample, as a correlated scalar subquery.

    None when the sample was never labelled or its verdict was cleared; 'ID' or 'OOD' otherwise.
    """
    return select(Label.label).where(Label.sample_id == Sample.id).order_by(Label.id.desc()).limit(1).scalar_subquery()
