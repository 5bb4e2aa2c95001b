"""The evaluation protocol of the paper (sections 3 and 4) over indicator scores.

Inputs are plain arrays: for each image set, indicator name -> float array [N] (what
`Scorer.score` returns, moved to numpy). OOD samples are the positives. The metrics
(auROC, FPR at 95 % TPR, detection error, from `monitor.metrics`) and the thresholds
(proportion, two-means, from `monitor.thresholds`) are the service's own, so the benchmark measures exactly what runs in production.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from tqdm import tqdm

from monitor.errors import InputError, MonitorError
from monitor.evaluation.intervals import finite_or_inf as _finite, orderable as _orderable
from monitor.names import INDICATORS, SUMMARY
from monitor.metrics import detection_error, fpr_at_tpr, roc_auc
from monitor.thresholds import proportion, two_means

SUPERVISED = "supervised"
Scores = dict[str, np.ndarray]
ScoreFunction = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def score_images(
    score: ScoreFunction,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    description: str | None = None,
    progress: bool = True,
) -> Scores:
    """Run `score` (e.g. `Scorer.score`) over `images` [N, C, H, W] in batches -> name -> [N]."""
    if images.ndim != 4 or len(images) == 0:
        raise InputError(f"images must be a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
    parts: dict[str, list[np.ndarray]] = {}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=description, unit="batch", disable=not progress, leave=False):
        batch = images[start : start + batch_size]
        if device is not None:
            batch = batch.to(device)
        for name, values in score(batch).items():
            parts.setdefault(name, []).append(values.detach().double().cpu().numpy().reshape(-1))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def ordered_methods(names: Iterable[str]) -> list[str]:
    """Indicator names in the paper's order (unknown ones after, sorted), 1C-Sum last."""
    names = set(names)
    known = [n for n in INDICATORS if n in names and n != SUMMARY]
    others = sorted(n for n in names if n not in INDICATORS and n != SUPERVISED)
    tail = [n for n in (SUPERVISED, SUMMARY) if n in names]
    return known + others + tail


def detection_metrics(id_values: np.ndarray, ood_values: np.ndarray) -> dict[str, float]:
    """auROC, FPR at 95 % TPR and detection error of one indicator, OOD as positives, in percent;
    'non_finite' counts the NaN or infinite values (NaN ranks as most suspicious)."""
    id_values, ood_values = np.asarray(id_values, dtype=np.float64), np.asarray(ood_values, dtype=np.float64)
    values = _orderable(np.concatenate([id_values, ood_values]))
    labels = np.concatenate([np.zeros(len(id_values), dtype=np.int64), np.ones(len(ood_values), dtype=np.int64)])
    return {
        "auroc": 100.0 * roc_auc(values, labels),
        "fpr95": 100.0 * fpr_at_tpr(values, labels, 0.95),
        "detection_error": 100.0 * detection_error(values, labels),
        "non_finite": int((~np.isfinite(id_values)).sum() + (~np.isfinite(ood_values)).sum()),
    }


def _features(scores: Scores, names: Sequence[str]) -> np.ndarray:
    return np.column_stack([np.asarray(scores[n], dtype=np.float64) for n in names])


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a random half of n samples (the smaller half) and the rest."""
    if n < 4:
        raise InputError(f"splitting into halves needs at least 4 samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def subset(scores: Scores, index: np.ndarray) -> Scores:
    return {name: np.asarray(values)[index] for name, values in scores.items()}


def fit_linear_svm(train_id: Scores, train_ood: Scores, features: Sequence[str]) -> Callable[[Scores], np.ndarray]:
    """The paper's supervised reference: a linear SVM on the standardised indicators, trained
    on ID (negative) and OOD (positive) samples. Returns its decision function. Ideal and
    unrealistic: the OOD samples it is tested on come from the set it was trained on.

    Non-finite values (NaN, inf) are clipped to the training range so the SVM sees numbers."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if not features:
        raise InputError("the supervised reference needs at least one indicator as a feature")
    train_x = np.concatenate([_features(train_id, features), _features(train_ood, features)])
    train_y = np.r_[np.zeros(len(train_x) - len(train_ood[features[0]])), np.ones(len(train_ood[features[0]]))]
    finite = np.where(np.isfinite(train_x), train_x, np.nan)
    low = np.nan_to_num(np.nanmin(finite, axis=0), nan=0.0)
    high = np.nan_to_num(np.nanmax(finite, axis=0), nan=0.0)

    def clean(x: np.ndarray) -> np.ndarray:
        return np.clip(np.where(np.isnan(x), high, x), low, high)

    model = make_pipeline(StandardScaler(), LinearSVC(C=1.0, class_weight="balanced", max_iter=20000))
    model.fit(clean(train_x), train_y)
    return lambda scores: model.decision_function(clean(_features(scores, features)))


def rank_methods(auroc_by_method: Mapping[str, float]) -> dict[str, float]:
    """Rank 1 = best auROC; ties share the average rank (as the paper's table 5)."""
    names = list(auroc_by_method)
    ranks = rankdata([-auroc_by_method[n] for n in names], method="average")
    return {name: float(rank) for name, rank in zip(names, ranks)}


def threshold_quality(values: np.ndarray, is_ood: np.ndarray, threshold: float) -> dict[str, float]:
    """What a threshold achieves on a labelled stream: values > threshold are flagged."""
    flagged = _finite(values) > threshold
    true_positives = int(np.sum(flagged & is_ood))
    n_flagged, n_ood = int(flagged.sum()), int(is_ood.sum())
    return {
        "threshold": float(threshold),
        "flagged": n_flagged,
        "flagged_share": n_flagged / len(values),
        "precision": true_positives / n_flagged if n_flagged else math.nan,
        "recall": true_positives / n_ood if n_ood else math.nan,
    }


def mixed_stream(
    id_scores: Scores, ood_sets: Mapping[str, Scores], ood_share: float, seed: int = 0
) -> tuple[Scores, np.ndarray, dict[str, int]]:
    """A shuffled stream of all ID samples plus OOD samples drawn evenly from the sets, so that
    OOD makes up `ood_share` of it. Returns (scores, is_ood, OOD count per set)."""
    if not 0 < ood_share < 1:
        raise InputError(f"ood_share must lie strictly between 0 and 1, not {ood_share!r}")
    if not ood_sets:
        raise InputError("a mixed stream needs at least one OOD set")
    rng = np.random.default_rng(seed)
    n_id = len(next(iter(id_scores.values())))
    wanted = max(1, round(n_id * ood_share / (1 - ood_share)))
    names = list(ood_sets)
    available = {n: len(next(iter(ood_sets[n].values()))) for n in names}
    counts = {}
    remaining = wanted
    # Even shares, smallest sets first: a set too small for its share leaves the rest to the larger ones.
    by_size = sorted(names, key=lambda n: available[n])
    for index, name in enumerate(by_size):
        sets_left = len(by_size) - index
        counts[name] = min(available[name], remaining // sets_left if sets_left > 1 else remaining)
        remaining -= counts[name]
    counts = {n: counts[n] for n in names}
    indicators = [m for m in id_scores if all(m in s for s in ood_sets.values())]
    picks = {n: rng.choice(available[n], size=counts[n], replace=False) for n in names}
    stream = {
        m: np.concatenate([np.asarray(id_scores[m])] + [np.asarray(ood_sets[n][m])[picks[n]] for n in names])
        for m in indicators
    }
    is_ood = np.r_[np.zeros(n_id, dtype=bool), np.ones(sum(counts.values()), dtype=bool)]
    order = rng.permutation(len(is_ood))
    return {m: v[order] for m, v in stream.items()}, is_ood[order], counts


def stream_thresholds(stream: Scores, is_ood: np.ndarray, methods: Sequence[str] | None = None) -> dict[str, dict]:
    """Per indicator: the proportion threshold (told the true OOD share) and the two-means
    threshold fitted on the unlabelled stream, with the precision and recall they reach.
    A fit that cannot be made (e.g. constant values) is reported with its reason."""
    share = float(np.mean(is_ood))
    results = {}
    for method in ordered_methods(stream) if methods is None else methods:
        values = _finite(stream[method])
        finite = values[np.isfinite(values)]
        fitted = {}
        for label, fit in (("proportion", lambda v: proportion(v, share)), ("two_means", two_means)):
            try:
                fitted[label] = threshold_quality(values, is_ood, float(fit(finite)))
            except MonitorError as error:
                fitted[label] = {"error": str(error)}
        results[method] = fitted
    return results
