"""What a candidate threshold policy would change, judged beside the active one on the same samples.

The caller (the refit job, the web page's what-if form) supplies two sets of samples from the
store: the recent **window** and every **labelled** sample. Each sample carries its id, its
predicted class, its label (1 OOD, 0 ID, -1 unknown) and its indicator value under each
policy: the two values differ when the candidate thresholds another indicator or re-weights
1C-Sum. :func:`shadow_evaluation` judges both sets with both policies and counts:

- on the window: the flagged share before and after, the samples that change side (newly
  flagged, no longer flagged, with their ids), and the flagged share of each predicted class;
- on the labelled samples: the mistakes before and after (ID flagged, OOD missed).

:func:`guard_reasons` turns an evaluation into the reasons a guarded activation holds a fit
back for approval. Pure numpy: no I/O, no configuration; decisions in docs/thresholds.md.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.errors import InputError
from monitor.thresholds import LABEL_ID, LABEL_OOD, ClassThresholds, class_array, label_array

__all__ = [
    "ClassShare",
    "LabelledMistakes",
    "ShadowEvaluation",
    "ShadowSamples",
    "guard_reasons",
    "shadow_evaluation",
]


def _values(values: Any, n: int, name: str) -> np.ndarray:
    """Indicator values as float64 [n]; NaN allowed (never flagged), anything non-numeric refused."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name}: cannot be read as numbers ({error})") from None
    if array.ndim != 1 or array.shape[0] != n:
        raise InputError(f"{name}: expected {n} values in a 1-D sequence, got shape {array.shape}")
    return array


@dataclass(frozen=True)
class ShadowSamples:
    """Samples both policies judge, as parallel arrays of equal length.

    ``ids``: the store's sample ids; ``predicted``: predicted classes; ``labels``: 1 OOD,
    0 ID, -1 unknown; ``active_values`` / ``candidate_values``: the indicator each policy
    thresholds, for each sample (the same array when both use the same indicator and weights).
    """

    ids: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    active_values: np.ndarray
    candidate_values: np.ndarray

    @classmethod
    def of(
        cls,
        ids: Any,
        predicted: Any,
        active_values: Any,
        candidate_values: Any = None,
        labels: Any = None,
        name: str = "samples",
    ) -> "ShadowSamples":
        """Validated arrays; ``candidate_values`` defaults to ``active_values``, ``labels`` to unknown."""
        id_array = np.asarray(ids)
        if id_array.ndim != 1 or (id_array.size and not np.issubdtype(id_array.dtype, np.integer)):
            raise InputError(f"{name}.ids: expected a 1-D sequence of integer sample ids, got {id_array.dtype}")
        n = id_array.shape[0]
        active = _values(active_values, n, f"{name}.active_values")
        candidate = active if candidate_values is None else _values(candidate_values, n, f"{name}.candidate_values")
        label_values = (
            np.full(n, -1, dtype=np.int8) if labels is None or n == 0 else label_array(labels, n, f"{name}.labels")
        )
        return cls(id_array.astype(np.int64), class_array(predicted, n, f"{name}.predicted"), label_values,
                   active, candidate)

    @classmethod
    def empty(cls) -> "ShadowSamples":
        return cls.of([], [], [])

    def __len__(self) -> int:
        return int(self.ids.size)


def _judge(policy: ClassThresholds | None, values: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """No active policy flags nothing (as the stream does before the first threshold)."""
    if policy is None or values.size == 0:
        return np.zeros(values.size, dtype=bool)
    return policy.judge(values, predicted)


@dataclass(frozen=True)
class ClassShare:
    """One predicted class of the window: its samples, flagged before and after, and the
    thresholds that judge it under each policy (None: no active policy)."""

    predicted_class: int
    n: int
    flagged_before: int
    flagged_after: int
    threshold_before: float | None
    threshold_after: float

    @property
    def share_before(self) -> float:
        return self.flagged_before / self.n

    @property
    def share_after(self) -> float:
        return self.flagged_after / self.n

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted_class": self.predicted_class,
            "n": self.n,
            "flagged_before": self.flagged_before,
            "flagged_after": self.flagged_after,
            "share_before": self.share_before,
            "share_after": self.share_after,
            "threshold_before": self.threshold_before,
            "threshold_after": self.threshold_after,
        }


@dataclass(frozen=True)
class LabelledMistakes:
    """Labelled samples on the wrong side under each policy: ID flagged (false alarms) and OOD
    not flagged (misses); ``changed_ids``: labelled samples the candidate moves across."""

    n_ood: int
    n_id: int
    false_alarms_before: int
    misses_before: int
    false_alarms_after: int
    misses_after: int
    changed_ids: tuple[int, ...]

    @property
    def before(self) -> int:
        return self.false_alarms_before + self.misses_before

    @property
    def after(self) -> int:
        return self.false_alarms_after + self.misses_after

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_ood": self.n_ood,
            "n_id": self.n_id,
            "false_alarms_before": self.false_alarms_before,
            "misses_before": self.misses_before,
            "mistakes_before": self.before,
            "false_alarms_after": self.false_alarms_after,
            "misses_after": self.misses_after,
            "mistakes_after": self.after,
            "changed_ids": list(self.changed_ids),
        }


@dataclass(frozen=True)
class ShadowEvaluation:
    """The candidate beside the active policy: window shares, side changes, per-class shares,
    labelled mistakes. ``newly_flagged`` / ``cleared``: ids of window samples the candidate
    flags and the active policy does not, and the reverse (ascending)."""

    n: int
    flagged_before: int
    flagged_after: int
    newly_flagged: tuple[int, ...]
    cleared: tuple[int, ...]
    classes: tuple[ClassShare, ...]
    labelled: LabelledMistakes
    active: ClassThresholds | None
    candidate: ClassThresholds

    @property
    def share_before(self) -> float | None:
        return self.flagged_before / self.n if self.n else None

    @property
    def share_after(self) -> float | None:
        return self.flagged_after / self.n if self.n else None

    @property
    def changed(self) -> int:
        """Window samples that change side."""
        return len(self.newly_flagged) + len(self.cleared)

    @property
    def share_factor(self) -> float:
        """How many times the flagged share moves, up or down (>= 1): max(after/before,
        before/after); 1 when both flag nothing, infinite when only one does."""
        before, after = self.flagged_before, self.flagged_after
        if before == after:
            return 1.0
        if min(before, after) == 0:
            return math.inf
        return max(after / before, before / after)

    def class_share(self, predicted_class: int) -> ClassShare | None:
        return next((c for c in self.classes if c.predicted_class == predicted_class), None)

    def explain(self) -> str:
        """A few sentences for the proposal's page, its alert and the logs."""
        if self.n:
            text = (
                f"on the {self.n} samples of the window the candidate flags {self.flagged_after} "
                f"({self.share_after:.2%}) where the active policy flags {self.flagged_before} "
                f"({self.share_before:.2%}): {len(self.newly_flagged)} newly flagged, "
                f"{len(self.cleared)} no longer flagged"
            )
        else:
            text = "the window holds no samples"
        moved = sorted(self.classes, key=lambda c: abs(c.flagged_after - c.flagged_before), reverse=True)
        moved = [c for c in moved if c.flagged_after != c.flagged_before][:3]
        if moved:
            text += "; most moved: " + ", ".join(
                f"class {c.predicted_class} {c.share_before:.1%} -> {c.share_after:.1%}" for c in moved
            )
        labelled = self.labelled
        if labelled.n_ood + labelled.n_id:
            text += (
                f". Labelled samples ({labelled.n_ood} OOD, {labelled.n_id} ID): {labelled.before} on the wrong "
                f"side before ({labelled.false_alarms_before} ID flagged, {labelled.misses_before} OOD missed), "
                f"{labelled.after} after ({labelled.false_alarms_after} ID flagged, {labelled.misses_after} "
                "OOD missed)"
            )
        else:
            text += ". No labelled samples to compare mistakes on"
        return text

    def to_dict(self, max_ids: int | None = None) -> dict[str, Any]:
        """JSON-ready; ``max_ids`` caps each id list (the counts stay exact)."""

        def ids(values: tuple[int, ...]) -> list[int]:
            return list(values if max_ids is None else values[:max_ids])

        labelled = self.labelled.to_dict()
        labelled["changed_ids"] = ids(self.labelled.changed_ids)
        return {
            "n": self.n,
            "flagged_before": self.flagged_before,
            "flagged_after": self.flagged_after,
            "share_before": self.share_before,
            "share_after": self.share_after,
            "share_factor": None if math.isinf(self.share_factor) else self.share_factor,
            "newly_flagged_count": len(self.newly_flagged),
            "cleared_count": len(self.cleared),
            "newly_flagged": ids(self.newly_flagged),
            "cleared": ids(self.cleared),
            "classes": [c.to_dict() for c in self.classes],
            "labelled": labelled,
            "active": None if self.active is None else self.active.to_dict(),
            "candidate": self.candidate.to_dict(),
        }


def _labelled_mistakes(
    samples: ShadowSamples, active: ClassThresholds | None, candidate: ClassThresholds
) -> LabelledMistakes:
    known = samples.labels != -1
    labels = samples.labels[known]
    predicted = samples.predicted[known]
    before = _judge(active, samples.active_values[known], predicted)
    after = _judge(candidate, samples.candidate_values[known], predicted)
    is_ood, is_id = labels == LABEL_OOD, labels == LABEL_ID
    return LabelledMistakes(
        n_ood=int(is_ood.sum()),
        n_id=int(is_id.sum()),
        false_alarms_before=int((before & is_id).sum()),
        misses_before=int((~before & is_ood).sum()),
        false_alarms_after=int((after & is_id).sum()),
        misses_after=int((~after & is_ood).sum()),
        changed_ids=tuple(np.sort(samples.ids[known][before != after]).tolist()),
    )


def shadow_evaluation(
    active: ClassThresholds | None,
    candidate: ClassThresholds,
    window: ShadowSamples,
    labelled: ShadowSamples | None = None,
) -> ShadowEvaluation:
    """Judge ``window`` and ``labelled`` with the active policy (None: nothing is flagged) and
    the candidate, and count what changes. ``labelled`` defaults to the window's own labelled
    samples. Nothing is stored or activated."""
    if active is not None and not isinstance(active, ClassThresholds):
        raise InputError(f"active: expected ClassThresholds or None, got {type(active).__name__}")
    if not isinstance(candidate, ClassThresholds):
        raise InputError(f"candidate: expected ClassThresholds, got {type(candidate).__name__}")
    before = _judge(active, window.active_values, window.predicted)
    after = _judge(candidate, window.candidate_values, window.predicted)
    classes = []
    for cls in np.unique(window.predicted).tolist():
        members = window.predicted == cls
        classes.append(ClassShare(
            predicted_class=int(cls),
            n=int(members.sum()),
            flagged_before=int(before[members].sum()),
            flagged_after=int(after[members].sum()),
            threshold_before=None if active is None else active.threshold_of(int(cls)),
            threshold_after=candidate.threshold_of(int(cls)),
        ))
    return ShadowEvaluation(
        n=len(window),
        flagged_before=int(before.sum()),
        flagged_after=int(after.sum()),
        newly_flagged=tuple(np.sort(window.ids[after & ~before]).tolist()),
        cleared=tuple(np.sort(window.ids[before & ~after]).tolist()),
        classes=tuple(classes),
        labelled=_labelled_mistakes(window if labelled is None else labelled, active, candidate),
        active=active,
        candidate=candidate,
    )


def guard_reasons(evaluation: ShadowEvaluation, max_share_factor: float) -> list[str]:
    """Why a guarded activation holds the candidate back for approval; empty: activate it.

    Held when the labelled mistakes rise, or when the window's flagged share moves by more
    than ``max_share_factor`` (> 1) up or down. A first policy (nothing active) is not held
    for its share: there is nothing to compare it with.
    """
    if isinstance(max_share_factor, bool) or not isinstance(max_share_factor, numbers.Real) or not (
        float(max_share_factor) > 1.0
    ):
        raise InputError(f"max_share_factor: expected a number above 1, got {max_share_factor!r}")
    reasons = []
    labelled = evaluation.labelled
    if labelled.after > labelled.before:
        reasons.append(
            f"labelled mistakes rise from {labelled.before} to {labelled.after} "
            f"(ID flagged {labelled.false_alarms_before} -> {labelled.false_alarms_after}, "
            f"OOD missed {labelled.misses_before} -> {labelled.misses_after})"
        )
    if evaluation.active is not None and evaluation.n and evaluation.share_factor > float(max_share_factor):
        reasons.append(
            f"the flagged share moves from {evaluation.share_before:.2%} to {evaluation.share_after:.2%}, "
            f"more than {float(max_share_factor):g} times"
        )
    return reasons
