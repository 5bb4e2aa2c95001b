"""Bootstrap intervals for auROC and for ranks (pure numpy, no I/O).

The auROC of a score is the Mann-Whitney statistic: the share of (ID, OOD) pairs in which
the OOD sample scores higher, ties counting one half, in percent (OOD are the positives, as
in `monitor.metrics.roc_auc`). A bootstrap draw resamples the ID and the OOD samples with
replacement, separately (stratified: both sizes stay fixed); it is represented by how many
times each sample was drawn, which lets `auroc_draws` compute every draw from one sort.

Draws are *paired* across methods: every indicator of one (model, set) is evaluated on the
same resampled images, so that the rank of one indicator among the others is resampled as a
whole. Over several trained models (seeds), `seed_draws` resamples the models too (a
two-level bootstrap: models, then test images), so intervals include the training noise.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from monitor.errors import InputError

DEFAULT_LEVEL = 0.95
_CHUNK = 128  # draws evaluated at once (memory: chunk x samples float64 arrays)


def finite_or_inf(values: np.ndarray) -> np.ndarray:
    """An undefined indicator value (NaN) counts as maximally suspicious: +inf."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), np.inf, values)


def orderable(values: np.ndarray) -> np.ndarray:
    """Finite values in the same order: NaN and +inf just above the largest finite value,
    -inf just below the smallest (the metrics depend on the order only)."""
    values = finite_or_inf(values)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    span = max(1.0, high - low)
    return np.where(values == np.inf, high + span, np.where(values == -np.inf, low - span, values))


def bootstrap_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, n] int: how many times each of n samples is picked in each resample of size n."""
    if n < 1 or draws < 1:
        raise InputError(f"a bootstrap needs at least one sample and one draw, not n={n}, draws={draws}")
    picks = rng.integers(0, n, size=(draws, n)) + (np.arange(draws) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=draws * n).reshape(draws, n)


def auroc_draws(
    id_values: np.ndarray,
    ood_values: np.ndarray,
    id_counts: np.ndarray | None = None,
    ood_counts: np.ndarray | None = None,
) -> np.ndarray:
    """auROC (%) of the score for each draw [B] (counts [B, n_id] and [B, n_ood]); without
    counts, the auROC of the samples as they are (a 1-element array)."""
    id_values, ood_values = np.asarray(id_values).reshape(-1), np.asarray(ood_values).reshape(-1)
    n_id, n_ood = len(id_values), len(ood_values)
    if n_id == 0 or n_ood == 0:
        raise InputError(f"auROC needs ID and OOD samples, got {n_id} and {n_ood}")
    id_counts = np.ones((1, n_id)) if id_counts is None else np.atleast_2d(id_counts)
    ood_counts = np.ones((1, n_ood)) if ood_counts is None else np.atleast_2d(ood_counts)
    if id_counts.shape[1] != n_id or ood_counts.shape[1] != n_ood or len(id_counts) != len(ood_counts):
        raise InputError(
            f"counts {id_counts.shape} and {ood_counts.shape} do not fit {n_id} ID and {n_ood} OOD samples"
        )
    values = orderable(np.concatenate([id_values, ood_values]))
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first index of each tie group
    is_ood = order >= n_id
    ties = len(starts) < len(values)
    # int32 weights (counts up to the sample size) halve the memory traffic; sums in int64.
    counts = np.concatenate([id_counts, ood_counts], axis=1).astype(np.int32)
    out = np.empty(len(counts))
    for begin in range(0, len(counts), _CHUNK):
        weights = counts[begin : begin + _CHUNK][:, order]
        id_weight = np.where(is_ood, 0, weights)
        ood_weight = weights - id_weight
        if ties:  # sum the weights of each group of equal values
            id_weight = np.add.reduceat(id_weight, starts, axis=1)
            ood_weight = np.add.reduceat(ood_weight, starts, axis=1)
        below = np.cumsum(id_weight, axis=1) - id_weight  # ID weight strictly below each value (group)
        pairs = id_weight.sum(axis=1, dtype=np.int64) * ood_weight.sum(axis=1, dtype=np.int64)
        wins = (ood_weight * (2 * below + id_weight)).sum(axis=1, dtype=np.int64)  # twice: a tie counts one half
        out[begin : begin + _CHUNK] = 50.0 * wins / pairs
    return out


def paired_auroc_draws(
    id_scores: Mapping[str, np.ndarray],
    ood_scores: Mapping[str, np.ndarray],
    methods: Sequence[str],
    draws: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(point auROC [M], bootstrap auROC [draws, M]) of `methods`, every method on the same
    resampled ID and OOD samples."""
    n_id, n_ood = len(id_scores[methods[0]]), len(ood_scores[methods[0]])
    id_counts, ood_counts = bootstrap_counts(n_id, draws, rng), bootstrap_counts(n_ood, draws, rng)
    point = np.array([auroc_draws(id_scores[m], ood_scores[m])[0] for m in methods])
    resampled = np.stack([auroc_draws(id_scores[m], ood_scores[m], id_counts, ood_counts) for m in methods], axis=1)
    return point, resampled


def percentile_interval(draws: np.ndarray, level: float = DEFAULT_LEVEL, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The central `level` share of the draws along `axis`: (low, high)."""
    if not 0 < level < 1:
        raise InputError(f"interval level must lie strictly between 0 and 1, not {level!r}")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail], axis=axis)
    return low, high


def rank_rows(auroc: np.ndarray) -> np.ndarray:
    """Rank of each method along the last axis: 1 = best auROC, ties share the average rank."""
    return rankdata(-np.asarray(auroc, dtype=np.float64), method="average", axis=-1)


def seed_draws(n_models: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, n_models] indices: the trained models resampled with replacement for each draw."""
    return rng.integers(0, n_models, size=(draws, n_models))


def mean_and_spread(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (n - 1) over `axis`; the spread is NaN for one value."""
    values = np.asarray(values, dtype=np.float64)
    count = values.shape[axis]
    spread = values.std(axis=axis, ddof=1) if count > 1 else np.full(np.delete(values.shape, axis), math.nan)
    return values.mean(axis=axis), spread


def hanley_mcneil_se(auroc_percent: float, n_id: int, n_ood: int) -> float:
    """The standard error of an auROC (in percent) by Hanley and McNeil (1982), the usual
    closed form for independent samples, against which the bootstrap is checked."""
    a = auroc_percent / 100.0
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (n_ood - 1) * (q1 - a * a) + (n_id - 1) * (q2 - a * a)) / (n_id * n_ood)
    return 100.0 * math.sqrt(max(variance, 0.0))
