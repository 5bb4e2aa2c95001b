"""Plain records the rest of the service exchanges with the store (no ORM objects leak out).

Writes take `ScoredSample`, `RejectRecord` and `ImageBlob`; reads return the frozen
dataclasses below. Timestamps are timezone-aware UTC on the way out; a naive datetime
given to the store is taken to be UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np

from monitor.errors import InputError
from monitor.names import INDICATORS
from monitor.store.payloads import (
    AlertDocument,
    ClassThresholdsDocument,
    ModelPreprocessing,
    ReportSummary,
    ThresholdCounts,
    ThresholdParameters,
)
from monitor.thresholds import ClassThresholds

LABEL_ID = "ID"
LABEL_OOD = "OOD"
LABEL_CODES = {LABEL_OOD: 1, LABEL_ID: 0}
"""Label -> the integer the threshold fitting expects (1 OOD, 0 ID; -1 stands for unknown)."""
UNLABELLED = -1
LABELS = (LABEL_ID, LABEL_OOD)
MAX_NOTE_LENGTH = 2000


def check_label(label: str, note: str | None = None) -> tuple[str, str | None]:
    """The one rule for an operator's verdict: exactly ID or OOD, an optional note of at most
    MAX_NOTE_LENGTH characters (blank is none). Returns (label, note); InputError names the field."""
    if label not in LABELS:
        raise InputError(f"label: {label!r} is not one of {', '.join(LABELS)}")
    note = (note or "").strip() or None
    if note is not None and len(note) > MAX_NOTE_LENGTH:
        raise InputError(f"note: at most {MAX_NOTE_LENGTH} characters, got {len(note)}")
    return label, note


class SourcePosition(NamedTuple):
    """Where a message came from: replays of the same position are stored once."""

    topic: str
    partition: int
    offset: int


def _check_indicator(name: str | None, what: str) -> None:
    if name is not None and name not in INDICATORS:
        raise InputError(f"{what}: unknown indicator {name!r}; expected one of {', '.join(INDICATORS)}")


MAX_PARTITION = 2**31 - 1  # Kafka: int32 partitions, int64 offsets; the columns match
MAX_OFFSET = 2**63 - 1
MAX_NAME_LENGTH = 255  # topic and sample key columns


def _check_position(topic: str, partition: int, offset: int, what: str) -> None:
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_NAME_LENGTH:
        raise InputError(f"{what}: topic must be a string of 1 to {MAX_NAME_LENGTH} characters, got {topic!r}")
    if not isinstance(partition, int) or not 0 <= partition <= MAX_PARTITION:
        raise InputError(f"{what}: partition must be an integer from 0 to {MAX_PARTITION}, got {partition!r}")
    if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InputError(f"{what}: offset must be an integer >= 0 and < 2**63, got {offset!r}")


def _check_key(sample_key: str, what: str) -> None:
    if not isinstance(sample_key, str) or len(sample_key) > MAX_NAME_LENGTH:
        raise InputError(f"{what}: sample_key must be a string of at most {MAX_NAME_LENGTH} characters")


@dataclass(frozen=True)
class ImageBlob:
    """Encoded image bytes kept for labelling, with their type and pixel size when known."""

    content_type: str
    data: bytes
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)) or len(self.data) == 0:
            raise InputError("image: data must be non-empty bytes")
        if not self.content_type:
            raise InputError("image: content_type must be given (e.g. 'image/png')")


@dataclass(frozen=True)
class ScoredSample:
    """One scored message, as the stream hands it to the store.

    `scores` maps canonical indicator names (monitor.names.INDICATORS) to values; a missing
    name, None or NaN is stored as NULL (the indicator is unavailable for this model).
    `score` is the value that was thresholded, `score_indicator` names its indicator.
    """

    topic: str
    partition: int
    offset: int
    sample_key: str
    model_id: int
    received_at: datetime
    scored_at: datetime
    predicted_class: int
    scores: Mapping[str, float | None]
    flagged: bool
    score: float | None = None
    score_indicator: str | None = None
    threshold_id: int | None = None
    produced_at: datetime | None = None
    image: ImageBlob | None = None

    def __post_init__(self) -> None:
        what = f"scored sample {self.topic}/{self.partition}/{self.offset}"
        _check_position(self.topic, self.partition, self.offset, what)
        _check_key(self.sample_key, what)
        for name in self.scores:
            _check_indicator(name, what)
        _check_indicator(self.score_indicator, f"{what} score_indicator")
        if self.flagged and (self.threshold_id is None or self.score is None):
            raise InputError(f"{what}: a flagged sample must carry its score and the threshold_id it was judged by")

    @property
    def position(self) -> SourcePosition:
        return SourcePosition(self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class RejectRecord:
    """A message that could not become a model input (reason: a short code, detail: for humans)."""

    topic: str
    partition: int
    offset: int
    sample_key: str
    reason: str
    detail: str
    size: int
    received_at: datetime

    def __post_init__(self) -> None:
        what = f"reject {self.topic}/{self.partition}/{self.offset}"
        _check_position(self.topic, self.partition, self.offset, what)
        _check_key(self.sample_key, what)
        if not self.reason:
            raise InputError(f"{what}: reason must be a non-empty code such as 'corrupt'")
        if self.size < 0:
            raise InputError(f"{what}: size must be >= 0, got {self.size}")

    @property
    def position(self) -> SourcePosition:
        return SourcePosition(self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class StoredJudgement:
    """How a sample already stored was judged when it was first written (see WriteResult.replayed)."""

    sample_id: int
    flagged: bool
    score: float | None
    indicator: str | None
    threshold: float | None
    threshold_id: int | None


@dataclass(frozen=True)
class WriteResult:
    """What one batch write did: rows inserted and rows already present (replays)."""

    samples_inserted: int = 0
    samples_duplicate: int = 0
    images_inserted: int = 0
    rejects_inserted: int = 0
    rejects_duplicate: int = 0
    sample_ids: Mapping[SourcePosition, int] = field(default_factory=dict)
    """Ids of the samples inserted by this write (replayed positions are absent)."""
    replayed: Mapping[SourcePosition, StoredJudgement] = field(default_factory=dict)
    """The batch's samples that were already stored, as they were judged then: a replay must
    alert on what the store says was flagged, not on a threshold that has changed since."""


@dataclass(frozen=True)
class ModelRow:
    id: int
    name: str
    fingerprint: str
    preprocessing: ModelPreprocessing
    created_at: datetime


@dataclass(frozen=True)
class ThresholdRecord:
    """A threshold to store: fitted (with the fit's counts) or configured (counts None)."""

    model_id: int
    indicator: str
    method: str
    value: float
    parameters: ThresholdParameters = field(default_factory=ThresholdParameters)
    counts: ThresholdCounts | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    fitted_by: str = "scheduler"
    class_thresholds: ClassThresholdsDocument | None = None  # own thresholds of predicted classes

    def __post_init__(self) -> None:
        _check_indicator(self.indicator, "threshold")
        if self.indicator is None:
            raise InputError("threshold: indicator must be given")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise InputError(f"threshold: value must be a finite number, got {self.value!r}")
        if not self.method:
            raise InputError("threshold: method must be given (e.g. 'two-means')")
        if not isinstance(self.parameters, ThresholdParameters):
            raise InputError(f"threshold: parameters must be ThresholdParameters, got {type(self.parameters).__name__}")
        if self.counts is not None and not isinstance(self.counts, ThresholdCounts):
            raise InputError(f"threshold: counts must be ThresholdCounts or None, got {type(self.counts).__name__}")
        if self.class_thresholds is not None and not isinstance(self.class_thresholds, ClassThresholdsDocument):
            raise InputError("threshold: class_thresholds must be a ClassThresholdsDocument or None, got "
                             f"{type(self.class_thresholds).__name__}")


@dataclass(frozen=True)
class ThresholdRow:
    id: int
    model_id: int
    indicator: str
    method: str
    value: float
    parameters: ThresholdParameters
    counts: ThresholdCounts | None
    window_start: datetime | None
    window_end: datetime | None
    active: bool
    created_at: datetime
    fitted_by: str
    summary_weights_id: int | None = None  # the 1C-Sum weights that belong to it (see Policy)
    class_thresholds: ClassThresholdsDocument | None = None  # own thresholds of predicted classes

    @property
    def thresholds(self) -> ClassThresholds:
        """The global threshold with the own ones of predicted classes: what judges with it."""
        return ClassThresholds(self.value, self.class_thresholds.per_class() if self.class_thresholds else {})


@dataclass(frozen=True)
class Policy:
    """What a batch is scored and judged by, read in one query and never half-applied: the active
    threshold of (model, indicator), the own thresholds of predicted classes stored in the same
    row, and the 1C-Sum weights stored with it. `version` is the threshold's id, which every score
    row records (`threshold_id`); `weights` None means the uniform 1C-Sum weights (no
    label-fitted weights were stored with the threshold). `per_class` empty: `threshold` judges
    every sample; otherwise a sample predicted as a class there is judged by that class's own."""

    version: int
    model_id: int
    indicator: str
    threshold: float
    summary_weights_id: int | None = None
    weights: Mapping[str, float] | None = None
    per_class: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # frozen all the way down: the scorer and the judge share it
        if self.weights is not None:
            object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "per_class", MappingProxyType(dict(self.thresholds.per_class)))

    @property
    def thresholds(self) -> ClassThresholds:
        """The thresholds that judge: a sample's predicted class's own, else the global one."""
        return ClassThresholds(self.threshold, self.per_class)

    def judgement(self, predicted_class: int) -> "Judgement":
        """Which threshold of this policy judges a sample predicted as `predicted_class`."""
        own = self.thresholds.judged_by(predicted_class)
        return Judgement(version=self.version, indicator=self.indicator,
                         value=self.thresholds.threshold_of(predicted_class), predicted_class=own)

    def describe(self) -> str:
        weights = f"1C-Sum weights #{self.summary_weights_id}" if self.summary_weights_id else "uniform 1C-Sum weights"
        own = f", own thresholds for {len(self.per_class)} classes" if self.per_class else ""
        return f"{self.indicator} > {self.threshold:.6g}{own} (policy #{self.version}, {weights})"


@dataclass(frozen=True)
class Judgement:
    """The threshold that judged (or judges) a sample: its value, the policy version it belongs
    to, and the predicted class whose own threshold it is (None: the global threshold)."""

    version: int
    indicator: str
    value: float
    predicted_class: int | None

    @property
    def scope(self) -> str:
        return "global" if self.predicted_class is None else "class"


@dataclass(frozen=True)
class LabelRow:
    id: int
    sample_id: int
    label: str | None  # None: the verdict was cleared (an undone first label), the sample is unlabelled
    labelled_by: str
    labelled_at: datetime
    note: str | None


@dataclass(frozen=True)
class SampleSummary:
    """One row of the flagged queue."""

    id: int
    model_id: int
    sample_key: str
    scored_at: datetime
    predicted_class: int
    score: float | None
    score_indicator: str | None
    flagged: bool
    label: str | None
    """Current label (the latest), or None when unlabelled."""
    has_image: bool


@dataclass(frozen=True)
class StoredImage:
    content_type: str
    data: bytes
    width: int | None
    height: int | None
    stored_at: datetime


@dataclass(frozen=True)
class SampleDetail:
    """A sample with every indicator value, what its kept image is (the bytes: `Store.get_image`)
    and its label history (oldest first)."""

    id: int
    model_id: int
    position: SourcePosition
    sample_key: str
    produced_at: datetime | None
    received_at: datetime
    scored_at: datetime
    predicted_class: int
    scores: dict[str, float | None]
    score: float | None
    score_indicator: str | None
    flagged: bool
    threshold_id: int | None
    image_content_type: str | None
    image_width: int | None
    image_height: int | None
    labels: list[LabelRow]

    @property
    def label(self) -> str | None:
        return self.labels[-1].label if self.labels else None


QUEUE_SORTS = ("time_desc", "time_asc", "score_desc", "score_asc")
QUEUE_LABELLED = ("any", "no", "yes", *LABELS)
"""The flagged queue's label filter: any, never labelled or cleared (no), labelled (yes), or one verdict."""


@dataclass(frozen=True)
class QueueQuery:
    """Which flagged samples of a model one page of the queue shows (bounds: scored_at in [since, until));
    with `sample_ids`, those samples whether flagged or not."""

    since: datetime | None = None
    until: datetime | None = None
    predicted_class: int | None = None
    labelled: str = "any"
    min_score: float | None = None
    max_score: float | None = None
    sort: str = "time_desc"
    page: int = 1
    per_page: int = 48
    # These samples only, flagged or not (the samples a shadow evaluation says change side).
    sample_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.sort not in QUEUE_SORTS:
            raise InputError(f"sort: {self.sort!r} is not one of {', '.join(QUEUE_SORTS)}")
        if self.labelled not in QUEUE_LABELLED:
            raise InputError(f"labelled: {self.labelled!r} is not one of {', '.join(QUEUE_LABELLED)}")
        if not isinstance(self.page, int) or self.page < 1:
            raise InputError(f"page: must be an integer >= 1, got {self.page!r}")
        if not isinstance(self.per_page, int) or not 1 <= self.per_page <= 1000:
            raise InputError(f"per_page: must be an integer from 1 to 1000, got {self.per_page!r}")


@dataclass(frozen=True)
class QueuePage:
    """One numbered page of the flagged queue; `total` counts every match."""

    items: list[SampleSummary]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass(frozen=True)
class WindowCounts:
    """Samples scored in a window, how many were flagged, and how many hold a verdict now."""

    scored: int
    flagged: int
    labelled: int


@dataclass(frozen=True)
class Histogram:
    """Counts of an indicator in equal-width bins (`edges` has one more entry than `counts`)."""

    indicator: str
    edges: list[float]
    counts: list[int]
    total: int


@dataclass(frozen=True)
class WindowScores:
    """An indicator over a window, aligned with the current labels (1 OOD, 0 ID, -1 unknown).

    Ordered oldest first. Samples where the indicator is NULL are left out.
    """

    indicator: str
    sample_ids: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    start: datetime | None
    end: datetime | None
    predicted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # predicted classes

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class RateBucket:
    start: datetime
    total: int
    flagged: int

    @property
    def rate(self) -> float:
        return self.flagged / self.total if self.total else 0.0


@dataclass(frozen=True)
class AlertRow:
    id: int
    kind: str
    payload: AlertDocument
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class ReportRow:
    id: int
    period_start: datetime
    period_end: datetime
    summary: ReportSummary
    file_path: str | None
    created_at: datetime


@dataclass(frozen=True)
class JobRunRow:
    id: int
    job: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    error: str | None
    runner: str | None = None  # "host:pid" of the process that ran it; None for runs stored before 0003


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep. None means no limit. Ages in seconds; counts in rows (the newest are kept).

    Deleting a sample deletes its image and labels with it.
    """

    image_max_age_s: float | None = None
    image_max_count: int | None = None
    sample_max_age_s: float | None = None
    sample_max_count: int | None = None
    reject_max_age_s: float | None = None
    alert_max_age_s: float | None = None
    job_run_max_age_s: float | None = None
    chunk_size: int = 5000

    def __post_init__(self) -> None:
        for name in ("image_max_age_s", "sample_max_age_s", "reject_max_age_s", "alert_max_age_s", "job_run_max_age_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"retention: {name} must be > 0 seconds or unset, got {value!r}")
        for name in ("image_max_count", "sample_max_count"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InputError(f"retention: {name} must be an integer >= 0 or unset, got {value!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise InputError(f"retention: chunk_size must be an integer >= 1, got {self.chunk_size!r}")


@dataclass(frozen=True)
class PurgeResult:
    """Rows deleted by one retention pass, per table."""

    images: int = 0
    samples: int = 0
    rejects: int = 0
    alerts: int = 0
    job_runs: int = 0
