"""Threshold-free quality of an indicator on labelled samples (OOD is the positive class).

- :func:`roc_auc`: area under the ROC curve (equal scores count one half, as Mann-Whitney).
- :func:`fpr_at_tpr`: the false-positive rate at 95 % true-positive rate (or another rate).
- :func:`detection_error`: min over thresholds of 0.5 (1 - TPR) + 0.5 FPR.

Labels are 1 (OOD), 0 (ID) or -1 (unknown, ignored), as everywhere in the monitor.
A threshold puts all equal scores on the same side, so ties are never split.
Pure numpy, no I/O.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from monitor.errors import InputError
from monitor.thresholds import LABEL_ID, LABEL_OOD, LABEL_UNKNOWN, NotEnoughData, finite_values, label_array

__all__ = ["RocCurve", "detection_error", "fpr_at_tpr", "roc_auc", "roc_curve"]


class RocCurve(NamedTuple):
    """Operating points from "flag nothing" to "flag everything", one per distinct score.

    ``thresholds[j]`` flags the scores >= it (+inf for the first point), giving
    ``tpr[j]`` and ``fpr[j]``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_ood: int
    n_id: int


def roc_curve(scores: Any, labels: Any) -> RocCurve:
    """Every ROC operating point of ``scores`` against ``labels`` (rows labelled -1 ignored)."""
    values = finite_values(scores, "scores")
    label_values = label_array(labels, values.size)
    known = label_values != LABEL_UNKNOWN
    values, positive = values[known], label_values[known] == LABEL_OOD
    n_ood = int(positive.sum())
    n_id = int((label_values[known] == LABEL_ID).sum())
    if n_ood == 0 or n_id == 0:
        raise NotEnoughData(
            "the ROC curve", "OOD labels" if n_ood == 0 else "ID labels", 0, 1,
            hint=f"got {n_ood} OOD and {n_id} ID labels; both kinds are needed",
        )
    order = np.argsort(-values, kind="stable")
    values, positive = values[order], positive[order]
    # The last index of each group of equal scores: a threshold moves a whole group at once.
    group_ends = np.concatenate((np.flatnonzero(values[1:] != values[:-1]), [values.size - 1]))
    true_positives = np.cumsum(positive)[group_ends]
    false_positives = (group_ends + 1) - true_positives
    return RocCurve(
        fpr=np.concatenate(([0.0], false_positives / n_id)),
        tpr=np.concatenate(([0.0], true_positives / n_ood)),
        thresholds=np.concatenate(([np.inf], values[group_ends])),
        n_ood=n_ood,
        n_id=n_id,
    )


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve with OOD (label 1) positive; 0.5 is chance, 1 perfect."""
    curve = roc_curve(scores, labels)
    # Trapezoids: a step over tied scores counts its OOD/ID pairs one half, as Mann-Whitney.
    return float(np.sum(np.diff(curve.fpr) * (curve.tpr[1:] + curve.tpr[:-1])) / 2.0)


def fpr_at_tpr(scores: Any, labels: Any, tpr: float = 0.95) -> float:
    """The lowest false-positive rate among thresholds that catch at least ``tpr`` of the OOD."""
    if isinstance(tpr, bool) or not isinstance(tpr, numbers.Real) or not 0.0 < float(tpr) <= 1.0:
        raise InputError(f"tpr: expected a rate in (0, 1], got {tpr!r}")
    curve = roc_curve(scores, labels)
    # Counts, not rates: 0.95 * 20 must reach 19 true positives despite float rounding.
    needed = float(tpr) * curve.n_ood - 1e-9 * curve.n_ood
    reached = curve.tpr * curve.n_ood >= needed
    return float(curve.fpr[reached].min())


def detection_error(scores: Any, labels: Any) -> float:
    """min over thresholds of 0.5 (1 - TPR) + 0.5 FPR: 0 is perfect, 0.5 is chance."""
    curve = roc_curve(scores, labels)
    return float(np.min(0.5 * (1.0 - curve.tpr) + 0.5 * curve.fpr))
