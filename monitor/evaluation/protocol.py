"""The evaluation protocol of the paper (sections 3 and 4) over indicator scores.

Inputs are plain arrays: for each image set, indicator name -> float array [N] (what
`Scorer.score` returns, moved to numpy). OOD samples are the positives. The metrics
(auROC, FPR at 95 % TPR, detection error, from `monitor.metrics`) and the thresholds
(proportion, two-means, from `monitor.thresholds`) are the service's own, so the benchmark measures exactly what runs in production.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from tqdm import tqdm

from monitor.errors import InputError, MonitorError
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


def _finite(values: np.ndarray) -> np.ndarray:
    """An undefined indicator value (NaN) counts as maximally suspicious: +inf."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), np.inf, values)


def _orderable(values: np.ndarray) -> np.ndarray:
    """Finite values in the same order: NaN and +inf just above the largest finite value,
    -inf just below the smallest (the metrics depend on the order only)."""
    values = _finite(values)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    span = max(1.0, high - low)
    return np.where(values == np.inf, high + span, np.where(values == -np.inf, low - span, values))


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


def supervised_baseline(
    id_scores: Scores, ood_scores: Scores, features: Sequence[str], seed: int = 0
) -> dict[str, float]:
    """The paper's supervised reference: a linear model (logistic regression on standardised
    indicators) trained on half of the ID and half of the OOD samples, evaluated on the other
    halves. Ideal and unrealistic (train and test OOD come from the same set)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    id_x, ood_x = _features(id_scores, features), _features(ood_scores, features)
    id_order, ood_order = rng.permutation(len(id_x)), rng.permutation(len(ood_x))
    id_half, ood_half = len(id_x) // 2, len(ood_x) // 2
    if min(id_half, ood_half) < 2:
        raise InputError(f"the supervised baseline needs at least 4 ID and 4 OOD samples, got {len(id_x)} and {len(ood_x)}")
    train_x = np.concatenate([id_x[id_order[:id_half]], ood_x[ood_order[:ood_half]]])
    train_y = np.r_[np.zeros(id_half), np.ones(ood_half)]
    test_id, test_ood = id_x[id_order[id_half:]], ood_x[ood_order[ood_half:]]
    # Non-finite values (NaN, inf) are clipped to the training range so the linear model sees numbers.
    finite = np.where(np.isfinite(train_x), train_x, np.nan)
    low, high = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
    low, high = np.nan_to_num(low, nan=0.0), np.nan_to_num(high, nan=0.0)

    def clean(x: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(x), high, x)
        return np.clip(x, low, high)

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"))
    model.fit(clean(train_x), train_y)
    result = detection_metrics(model.decision_function(clean(test_id)), model.decision_function(clean(test_ood)))
    result.update({"train_id": id_half, "train_ood": ood_half, "test_id": len(test_id), "test_ood": len(test_ood)})
    return result


def rank_methods(auroc_by_method: Mapping[str, float]) -> dict[str, float]:
    """Rank 1 = best auROC; ties share the average rank (as the paper's table 5)."""
    names = list(auroc_by_method)
    ranks = rankdata([-auroc_by_method[n] for n in names], method="average")
    return {name: float(rank) for name, rank in zip(names, ranks)}


@dataclass
class SetResult:
    """Metrics of every method against one OOD set."""

    name: str
    size: int
    metrics: dict[str, dict[str, float]]  # method -> {"auroc", "fpr95", ...}
    ranks: dict[str, float]  # method -> rank among all methods (individual + supervised + 1C-Sum)

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "metrics": self.metrics, "ranks": self.ranks}


def evaluate_set(
    id_scores: Scores, ood_scores: Scores, name: str, supervised: bool = True, seed: int = 0
) -> SetResult:
    """Every indicator present in both score dicts, plus the supervised baseline, against one set."""
    methods = [m for m in ordered_methods(id_scores) if m in ood_scores]
    if not methods:
        raise InputError(f"OOD set {name!r}: no indicator is present in both the ID and the OOD scores")
    metrics = {m: detection_metrics(id_scores[m], ood_scores[m]) for m in methods}
    if supervised:
        features = [m for m in methods if m != SUMMARY]
        metrics[SUPERVISED] = supervised_baseline(id_scores, ood_scores, features, seed)
        metrics = {m: metrics[m] for m in ordered_methods(metrics)}
    ranks = rank_methods({m: v["auroc"] for m, v in metrics.items()})
    size = len(next(iter(ood_scores.values())))
    return SetResult(name=name, size=size, metrics=metrics, ranks=ranks)


def average_ranks(results: Sequence[SetResult]) -> dict[str, float]:
    """Mean over sets of each method's rank (methods present in every set)."""
    if not results:
        return {}
    common = set(results[0].ranks).intersection(*(r.ranks for r in results[1:]))
    return {m: float(np.mean([r.ranks[m] for r in results])) for m in ordered_methods(common)}


def summary_rank_among_indicators(results: Sequence[SetResult]) -> dict[str, float]:
    """1C-Sum's rank among the individual indicators only (supervised left out), per set and
    on average: the quantity the paper's 'second best after the supervised model' refers to."""
    per_set = {}
    for result in results:
        if SUMMARY not in result.metrics:
            continue
        competing = {m: v["auroc"] for m, v in result.metrics.items() if m != SUPERVISED}
        per_set[result.name] = rank_methods(competing)[SUMMARY]
    average = float(np.mean(list(per_set.values()))) if per_set else math.nan
    return {"per_set": per_set, "average": average}


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
