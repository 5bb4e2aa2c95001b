"""The JSON documents the store keeps: one typed class per JSON column (and per alert kind).

Writers build these objects and readers get them back; `to_json` and `from_json` are the one
translation both sides share, and the store's column types call them (monitor.store.models),
so nothing reaches a JSON column, or comes out of one, without passing through its class.
`from_json` refuses a document it does not understand (not an object, an unknown or a
missing key, another kind or schema version) with a PayloadError that names the key.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Mapping

from monitor.errors import MonitorError

ALERT_SCHEMA_VERSION = 1


class PayloadError(MonitorError):
    """A JSON document that does not have the shape its class defines; the message says where."""


def json_value(value: Any) -> Any:
    """A plain JSON value: payloads as their documents, numpy scalars as numbers, NaN and
    infinities as null (JSON has neither), tuples as lists, recursively."""
    if isinstance(value, Payload):
        return value.to_json()
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


@dataclass(frozen=True)
class Payload:
    """Base of the typed documents: the dataclass fields are the document's keys.

    NESTED names the fields that hold another payload (LISTS: a list of them); OMIT_NONE the
    optional keys left out of the document while unset; DERIVED keys that `to_json` adds for
    readers of the raw JSON and `from_json` accepts and recomputes.
    """

    WHAT: ClassVar[str] = "document"
    NESTED: ClassVar[Mapping[str, type["Payload"]]] = {}
    LISTS: ClassVar[Mapping[str, type["Payload"]]] = {}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()
    DERIVED: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        document = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name in self.OMIT_NONE:
                continue
            document[item.name] = json_value(value)
        for name in self.DERIVED:
            document[name] = json_value(getattr(self, name))
        return document

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(item.name for item in fields(cls))

    @classmethod
    def from_json(cls, data: Any):
        mapping = _mapping(data, cls.WHAT)
        known = {item.name: item for item in fields(cls)}
        unknown = sorted(set(mapping) - set(known) - set(cls.DERIVED))
        if unknown:
            raise PayloadError(f"{cls.WHAT}: unknown key(s) {', '.join(map(repr, unknown))}; "
                               f"expected {', '.join(known)}")
        missing = [name for name, item in known.items() if name not in mapping
                   and item.default is MISSING and item.default_factory is MISSING]
        if missing:
            raise PayloadError(f"{cls.WHAT}: key(s) {', '.join(map(repr, missing))} missing")
        values = {}
        for name, value in mapping.items():
            if name not in known:
                continue
            if name in cls.NESTED and value is not None:
                value = cls.NESTED[name].from_json(value)
            elif name in cls.LISTS:
                if not isinstance(value, list):
                    raise PayloadError(f"{cls.WHAT}: {name!r} must be a list, got {type(value).__name__}")
                value = tuple(cls.LISTS[name].from_json(item) for item in value)
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise PayloadError(f"{cls.WHAT}: {error}") from None


def _mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise PayloadError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _require(condition: bool, what: str, message: str) -> None:
    if not condition:
        raise PayloadError(f"{what}: {message}")


# --- models and calibrations ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPreprocessing(Payload):
    """`monitored_models.preprocessing`: what the model expects (monitor.classifiers.Preprocessing)."""

    WHAT: ClassVar[str] = "model preprocessing"

    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    def class_label(self, index: int) -> str:
        """How pages and reports name a predicted class: "Shirt (6)" when the model knows its
        class names, else "class 6"."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return f"{self.class_names[index]} ({index})"
        return f"class {index}"


@dataclass(frozen=True)
class NoiseCalibration(Payload):
    """`calibrations.stats`: the 1C-Sum noise statistics (monitor.indicators.Calibration.to_dict)."""

    WHAT: ClassVar[str] = "noise calibration"

    fingerprint: str
    n: int
    seed: int
    means: Mapping[str, float]
    stds: Mapping[str, float]
    dropped: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    format: int = 1


# --- thresholds and weights -------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdCounts(Payload):
    """`thresholds.counts`: what a fit saw (monitor.thresholds.ThresholdFit.counts)."""

    WHAT: ClassVar[str] = "threshold counts"
    DERIVED: ClassVar[tuple[str, ...]] = ("n_unlabelled", "mistakes")

    n: int
    n_flagged: int | None = None
    n_labelled_ood: int = 0
    n_labelled_id: int = 0
    false_alarms: int = 0
    misses: int = 0

    @property
    def n_unlabelled(self) -> int:
        return self.n - self.n_labelled_ood - self.n_labelled_id

    @property
    def mistakes(self) -> int:
        return self.false_alarms + self.misses

    def labels_used(self) -> str:
        """'12 OOD, 40 ID', or 'none' for a fit without labels."""
        if not (self.n_labelled_ood or self.n_labelled_id):
            return "none"
        return f"{self.n_labelled_ood} OOD, {self.n_labelled_id} ID"


@dataclass(frozen=True)
class Window(Payload):
    """A span of samples: its bounds (ISO 8601 UTC) and how it was chosen or what it held."""

    WHAT: ClassVar[str] = "window"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"start", "end", "hours", "last_samples", "seconds", "samples"})

    start: str | None = None
    end: str | None = None
    hours: float | None = None
    last_samples: int | None = None
    seconds: float | None = None
    samples: int | None = None


@dataclass(frozen=True)
class ThresholdParameters(Payload):
    """`thresholds.parameters`: the method's own parameters and how the fit was made.

    p (proportion), q and initial_quantile (extreme-value), min_samples: the fit's. window,
    used_labels, details (the fit's figures): the refit job's. source: where a threshold that was
    not fitted came from. summary_weights_id: written by fits stored before the column
    thresholds.summary_weights_id linked each threshold to its weights; read, no longer written.
    """

    WHAT: ClassVar[str] = "threshold parameters"
    NESTED: ClassVar[Mapping[str, type[Payload]]] = {"window": Window}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset(
        {"p", "q", "initial_quantile", "min_samples", "window", "used_labels", "details", "summary_weights_id",
         "source"})

    p: float | None = None
    q: float | None = None
    initial_quantile: float | None = None
    min_samples: int | None = None
    window: Window | None = None
    used_labels: bool | None = None
    details: Mapping[str, Any] | None = None
    summary_weights_id: int | None = None
    source: str | None = None

    def describe(self) -> str:
        """The method's parameters and the window, for people: 'p=0.05 min_samples=200; last 10000 samples'."""
        parts = [" ".join(f"{name}={getattr(self, name):g}" for name in ("p", "q", "initial_quantile", "min_samples")
                          if getattr(self, name) is not None)]
        if self.window is not None and self.window.last_samples is not None:
            parts.append(f"last {self.window.last_samples} samples")
        elif self.window is not None and self.window.hours is not None:
            parts.append(f"last {self.window.hours:g} hours")
        if self.source:
            parts.append(self.source)
        return "; ".join(part for part in parts if part)


@dataclass(frozen=True)
class SummaryWeightsDocument(Payload):
    """`summary_weights.weights`: label-fitted 1C-Sum weights (monitor.thresholds.SummaryWeights
    .to_dict) and the members they weigh."""

    WHAT: ClassVar[str] = "1C-Sum weights"

    weights: Mapping[str, float]
    members: tuple[str, ...]
    offset: float | None = None
    used_labels: bool = True
    reason: str = ""
    n_labelled_ood: int = 0
    n_labelled_id: int = 0
    auroc_uniform: float | None = None
    auroc_fitted: float | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.weights, Mapping) and all(
            isinstance(value, (int, float)) and not isinstance(value, bool) for value in self.weights.values()),
            self.WHAT, "'weights' must map indicator names to numbers")


@dataclass(frozen=True)
class ClassThresholdsDocument(Payload):
    """`thresholds.class_thresholds`: the own thresholds of a per-class fit
    (monitor.thresholds.ClassThresholdFit), beside the global one in `thresholds.value`.

    thresholds: class index (a string, JSON keys are) -> its own threshold. class_counts: samples
    of each predicted class in the fit's window; fallbacks: why each other class seen there is
    judged by the global threshold; min_class_samples: the fewest samples for an own threshold.
    """

    WHAT: ClassVar[str] = "class thresholds"

    thresholds: Mapping[str, float]
    min_class_samples: int
    class_counts: Mapping[str, int] = field(default_factory=dict)
    fallbacks: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("thresholds", "class_counts", "fallbacks"):
            mapping = getattr(self, name)
            _require(isinstance(mapping, Mapping), self.WHAT, f"{name!r} must map class indices to values")
            for key in mapping:
                _require(isinstance(key, str) and key.isdigit(), self.WHAT,
                         f"{name!r}: class indices must be strings of digits, got {key!r}")
        _require(all(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                     for value in self.thresholds.values()), self.WHAT, "'thresholds' must hold finite numbers")

    def per_class(self) -> dict[int, float]:
        """Class index -> own threshold (as monitor.thresholds.ClassThresholds takes them)."""
        return {int(key): float(value) for key, value in self.thresholds.items()}

    @classmethod
    def of_fit(cls, fit: Any) -> "ClassThresholdsDocument":
        """The document of a monitor.thresholds.ClassThresholdFit."""
        return cls(thresholds={str(k): float(own.threshold) for k, own in fit.classes.items()},
                   min_class_samples=int(fit.min_class_samples),
                   class_counts={str(k): int(v) for k, v in fit.class_counts.items()},
                   fallbacks={str(k): str(why) for k, why in fit.fallbacks.items()})


# --- threshold proposals ----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyThresholds(Payload):
    """A policy's thresholds (monitor.thresholds.ClassThresholds.to_dict): the global one, and the
    own threshold of each predicted class that has one (keys: class indices as strings)."""

    WHAT: ClassVar[str] = "policy thresholds"

    global_threshold: float
    per_class: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"global": json_value(self.global_threshold), "per_class": json_value(self.per_class)}

    @classmethod
    def from_json(cls, data: Any) -> "PolicyThresholds":
        mapping = _mapping(data, cls.WHAT)
        unknown = sorted(set(mapping) - {"global", "per_class"})
        if unknown:
            raise PayloadError(f"{cls.WHAT}: unknown key(s) {', '.join(map(repr, unknown))}; expected global, per_class")
        _require("global" in mapping, cls.WHAT, "key 'global' missing")
        per_class = mapping.get("per_class") or {}
        _require(isinstance(per_class, Mapping), cls.WHAT, "'per_class' must map class indices to thresholds")
        return cls(mapping["global"], dict(per_class))


@dataclass(frozen=True)
class ClassShareDocument(Payload):
    """One predicted class of a shadow evaluation's window (monitor.shadow.ClassShare.to_dict)."""

    WHAT: ClassVar[str] = "proposal class share"

    predicted_class: int
    n: int
    flagged_before: int
    flagged_after: int
    share_before: float
    share_after: float
    threshold_before: float | None
    threshold_after: float


@dataclass(frozen=True)
class LabelledMistakesDocument(Payload):
    """Labelled samples on the wrong side under each policy (monitor.shadow.LabelledMistakes.to_dict)."""

    WHAT: ClassVar[str] = "proposal labelled mistakes"

    n_ood: int
    n_id: int
    false_alarms_before: int
    misses_before: int
    mistakes_before: int
    false_alarms_after: int
    misses_after: int
    mistakes_after: int
    changed_ids: tuple[int, ...]


@dataclass(frozen=True)
class ProposalEvaluation(Payload):
    """`threshold_proposals.evaluation`: the shadow evaluation of the proposed threshold beside the
    one active when it was made (monitor.shadow.ShadowEvaluation.to_dict, id lists capped), the
    reasons a guarded activation held it back (empty otherwise) and the evaluation in words."""

    WHAT: ClassVar[str] = "proposal evaluation"
    NESTED: ClassVar[Mapping[str, type[Payload]]] = {
        "labelled": LabelledMistakesDocument, "active": PolicyThresholds, "candidate": PolicyThresholds}
    LISTS: ClassVar[Mapping[str, type[Payload]]] = {"classes": ClassShareDocument}

    n: int
    flagged_before: int
    flagged_after: int
    share_before: float | None
    share_after: float | None
    share_factor: float | None
    newly_flagged_count: int
    cleared_count: int
    newly_flagged: tuple[int, ...]
    cleared: tuple[int, ...]
    classes: tuple[ClassShareDocument, ...]
    labelled: LabelledMistakesDocument
    active: PolicyThresholds | None
    candidate: PolicyThresholds
    reasons: tuple[str, ...]
    explanation: str


# --- alerts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertPayload(Payload):
    """What one kind of alert adds to the common fields (see AlertDocument)."""

    KIND: ClassVar[str] = ""


@dataclass(frozen=True)
class ThresholdChangedAlert(AlertPayload):
    KIND: ClassVar[str] = "threshold_changed"
    WHAT: ClassVar[str] = "threshold_changed alert"
    NESTED: ClassVar[Mapping[str, type[Payload]]] = {
        "parameters": ThresholdParameters, "window": Window, "counts": ThresholdCounts}

    model_id: int
    indicator: str
    threshold_id: int
    value: float
    method: str
    parameters: ThresholdParameters
    previous_threshold_id: int | None
    previous_value: float | None
    window: Window
    counts: ThresholdCounts
    summary_weights_id: int | None
    explanation: str
    class_thresholds: Mapping[str, float] | None = None  # own thresholds of predicted classes; null: none (older rows lack the key)


@dataclass(frozen=True)
class OodRateAlert(AlertPayload):
    KIND: ClassVar[str] = "ood_rate"
    WHAT: ClassVar[str] = "ood_rate alert"
    NESTED: ClassVar[Mapping[str, type[Payload]]] = {"window": Window}

    state: str
    model_id: int
    episode_started_at: str | None
    window: Window
    samples: int
    flagged: int
    observed_share: float | None
    expected_share: float
    p_value: float | None
    alpha: float
    test: str


@dataclass(frozen=True)
class DriftTest(Payload):
    """One indicator's two-sample test; `drifted` is left out where only drifted ones are listed."""

    WHAT: ClassVar[str] = "drift test"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"drifted"})

    indicator: str
    statistic: float | None
    p_value: float | None
    adjusted_p_value: float | None
    drifted: bool | None = None


@dataclass(frozen=True)
class DriftAlert(AlertPayload):
    KIND: ClassVar[str] = "drift"
    WHAT: ClassVar[str] = "drift alert"
    NESTED: ClassVar[Mapping[str, type[Payload]]] = {"period": Window, "reference": Window}
    LISTS: ClassVar[Mapping[str, type[Payload]]] = {"drifted": DriftTest}

    report_id: int
    model_id: int
    period: Window
    reference: Window
    drifted: tuple[DriftTest, ...]
    test: str
    correction: str
    alpha: float
    min_effect: float
    file_path: str | None


@dataclass(frozen=True)
class JobFailedAlert(AlertPayload):
    KIND: ClassVar[str] = "job_failed"
    WHAT: ClassVar[str] = "job_failed alert"

    job: str
    run_id: int
    error: str
    started_at: str | None
    failed_at: str | None
    runner: str | None


@dataclass(frozen=True)
class ThresholdProposedAlert(AlertPayload):
    """A re-fit's threshold waits for an admin (monitor.jobs.proposals.propose): why, and what it
    would change to the window's flagged share."""

    KIND: ClassVar[str] = "threshold_proposed"
    WHAT: ClassVar[str] = "threshold_proposed alert"

    model_id: int
    indicator: str
    proposal_id: int
    threshold_id: int
    value: float
    method: str
    reasons: tuple[str, ...]
    share_before: float | None
    share_after: float | None
    expires_at: str
    explanation: str
    class_thresholds: Mapping[str, float] | None = None  # own thresholds of predicted classes; null: none (older rows lack the key)


@dataclass(frozen=True)
class ThresholdActivatedAlert(AlertPayload):
    """An admin approved a proposal: its threshold (and 1C-Sum weights) became active."""

    KIND: ClassVar[str] = "threshold_activated"
    WHAT: ClassVar[str] = "threshold_activated alert"

    model_id: int
    indicator: str
    proposal_id: int
    threshold_id: int
    value: float
    method: str
    previous_threshold_id: int | None
    previous_value: float | None
    summary_weights_id: int | None
    approved_by: str
    note: str | None
    class_thresholds: Mapping[str, float] | None = None  # own thresholds of predicted classes; null: none (older rows lack the key)


ALERT_PAYLOADS: dict[str, type[AlertPayload]] = {
    cls.KIND: cls for cls in (ThresholdChangedAlert, OodRateAlert, DriftAlert, JobFailedAlert,
                              ThresholdProposedAlert, ThresholdActivatedAlert)}
ALERT_KINDS = tuple(ALERT_PAYLOADS)
COMMON_ALERT_FIELDS = ("schema_version", "kind", "created_at", "alert_id")
"""Keys of every published alert document (alert_id is null only when the database was unreachable)."""


@dataclass(frozen=True)
class AlertDocument:
    """`alerts.payload`: the alert as published, without its id (the row's id is `alert_id`)."""

    payload: AlertPayload
    created_at: str
    schema_version: int = ALERT_SCHEMA_VERSION

    @property
    def kind(self) -> str:
        return self.payload.KIND

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "kind": self.kind, "created_at": self.created_at,
                **self.payload.to_json()}

    def published(self, alert_id: int | None) -> dict[str, Any]:
        """The document as it goes out on the alerts topic and webhook."""
        return {**self.to_json(), "alert_id": alert_id}

    @classmethod
    def from_json(cls, data: Any) -> "AlertDocument":
        mapping = dict(_mapping(data, "alert"))
        version = mapping.pop("schema_version", None)
        if version != ALERT_SCHEMA_VERSION:
            raise PayloadError(f"alert: schema_version {version!r} is not {ALERT_SCHEMA_VERSION}")
        kind = mapping.pop("kind", None)
        if kind not in ALERT_PAYLOADS:
            raise PayloadError(f"alert: kind {kind!r} is not one of {', '.join(ALERT_KINDS)}")
        created_at = mapping.pop("created_at", None)
        _require(isinstance(created_at, str), "alert", f"created_at must be an ISO 8601 string, got {created_at!r}")
        return cls(ALERT_PAYLOADS[kind].from_json(mapping), created_at, version)


# --- reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportSummary(Payload):
    """`reports.summary`: the figures of a drift report (monitor.jobs.drift_report)."""

    WHAT: ClassVar[str] = "report summary"
    NESTED: ClassVar[Mapping[str, type[Payload]]] = {"reference": Window}
    LISTS: ClassVar[Mapping[str, type[Payload]]] = {"tests": DriftTest}

    model_id: int
    indicator: str
    samples: int
    flagged: int
    reference: Window
    labels: Mapping[str, int]
    drifted: tuple[str, ...]
    tests: tuple[DriftTest, ...]
    correction: str
    alpha: float
    min_effect: float


def payload_keys(cls: type[Payload]) -> tuple[str, ...]:
    """The keys a payload class writes (its fields, then its derived keys)."""
    return (*cls.keys(), *cls.DERIVED)


__all__ = [
    "ALERT_KINDS", "ALERT_PAYLOADS", "ALERT_SCHEMA_VERSION", "COMMON_ALERT_FIELDS", "AlertDocument", "AlertPayload",
    "ClassShareDocument", "DriftAlert", "DriftTest", "JobFailedAlert", "LabelledMistakesDocument",
    "ClassThresholdsDocument", "ModelPreprocessing", "NoiseCalibration", "OodRateAlert", "Payload", "PayloadError", "PolicyThresholds",
    "ProposalEvaluation", "ReportSummary", "SummaryWeightsDocument", "ThresholdActivatedAlert",
    "ThresholdChangedAlert", "ThresholdCounts", "ThresholdParameters", "ThresholdProposedAlert", "Window",
    "json_value", "payload_keys",
]

