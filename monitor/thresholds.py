"""Where to cut an indicator: thresholds fitted on observed values (paper section 5).

Every indicator is low for in-distribution (ID) samples and high for out-of-distribution
(OOD) ones, so a threshold ``t`` flags the values strictly above it (``values > t``).

- :func:`proportion`: flag the expected OOD share ``p``.
- :func:`two_means`: the exact 1-D 2-means (Otsu) split, O(n log n), no iterations.
- :func:`extreme_value`: peaks over threshold with a generalised Pareto tail (SPOT),
  for false-alarm rates far below what the empirical quantile resolves.
- :func:`fit_threshold`: any of those, optionally steered by operator labels
  (1 OOD, 0 ID, -1 unknown), returning a :class:`ThresholdFit` that says what it used.
- :func:`fit_class_thresholds`: one threshold per predicted class with enough samples, the
  global one for the rest; :class:`ClassThresholds` judges (value, predicted class) pairs.
- :func:`fit_summary_weights`: label-driven weights for the 1C-Sum summary.

Pure numpy/scipy/scikit-learn: no I/O, no configuration. Decisions (tie rules, the
label rule, minimum counts) are documented in docs/thresholds.md.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from monitor.errors import InputError, MonitorError
from monitor.names import INDICATORS, SUMMARY_MEMBERS_EXCLUDED

__all__ = [
    "ClassThresholdFit",
    "ClassThresholds",
    "DEFAULT_INITIAL_QUANTILE",
    "DEFAULT_MIN_CLASS_SAMPLES",
    "DEFAULT_MIN_SAMPLES",
    "LABEL_ID",
    "LABEL_OOD",
    "LABEL_UNKNOWN",
    "METHODS",
    "MIN_LABELS_PER_CLASS",
    "MIN_PEAKS",
    "NotEnoughData",
    "SummaryWeights",
    "TailFit",
    "ThresholdFit",
    "class_array",
    "extreme_value",
    "finite_values",
    "fit_class_thresholds",
    "fit_summary_weights",
    "fit_tail",
    "fit_threshold",
    "label_array",
    "proportion",
    "two_means",
]

METHODS: tuple[str, ...] = ("proportion", "two-means", "extreme-value")

DEFAULT_MIN_SAMPLES = 20
"""fit_threshold refuses fewer values than this (override with ``min_samples``)."""

DEFAULT_INITIAL_QUANTILE = 0.98
"""Extreme-value method: the peaks are the values above this empirical quantile."""

MIN_PEAKS = 10
"""Extreme-value method: fewest values above the initial threshold the tail is fitted on."""

MIN_LABELS_PER_CLASS = 10
"""1C-Sum re-weighting needs at least this many labelled OOD and labelled ID samples."""

# Two splits whose within-group sums of squares differ by less than this share of the
# total sum of squares are a tie (float rounding must not decide between them).
TIE_RTOL = 1e-10

LABEL_OOD, LABEL_ID, LABEL_UNKNOWN = 1, 0, -1


class NotEnoughData(MonitorError):
    """Too few values (or peaks, or distinct values) to fit: keep the previous threshold.

    ``what`` names what was counted, ``got`` and ``needed`` are the counts; ``counts``
    holds both for storing beside a "kept the old threshold" record.
    """

    def __init__(self, method: str, what: str, got: int, needed: int, hint: str = "") -> None:
        self.method = method
        self.what = what
        self.got = int(got)
        self.needed = int(needed)
        self.counts = {"got": self.got, "needed": self.needed}
        message = f"not enough data for {method}: {self.got} {what}, need at least {self.needed}"
        super().__init__(message + (f"; {hint}" if hint else ""))

    def to_dict(self) -> dict[str, Any]:
        """What to store beside "kept the previous threshold": the method, counts and reason."""
        return {"method": self.method, "what": self.what, **self.counts, "reason": str(self)}


# --- validation at the edge ---------------------------------------------------------------


def _numeric_array(values: Any, name: str) -> np.ndarray:
    """``values`` as a non-empty 1-D float64 array (finiteness not checked yet)."""
    try:
        array = np.asarray(values)
    except Exception as error:  # noqa: BLE001 - any conversion failure is the caller's input
        raise InputError(f"{name}: cannot be read as numbers ({error})") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise InputError(f"{name}: expected numbers, got an array of {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{name}: expected real numbers, got complex values")
    if array.ndim != 1:
        raise InputError(f"{name}: expected a 1-D sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name}: is empty")
    return array.astype(np.float64, copy=False)


def _refuse_non_finite(array: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{name}: {int(bad.sum())} of {array.size} values are NaN or infinite "
            f"(first at index {first}); remove or fix them before fitting"
        )


def finite_values(values: Any, name: str = "values") -> np.ndarray:
    """``values`` as a 1-D float64 array; InputError if empty, not numeric, not 1-D or not finite.

    NaN and infinite values are refused rather than dropped: a silent drop would change
    the share a threshold flags without anyone noticing.
    """
    array = _numeric_array(values, name)
    _refuse_non_finite(array, name)
    return array


def _sorted_finite(values: Any, name: str = "values") -> np.ndarray:
    """finite_values, sorted; the finiteness check costs O(1) after the sort."""
    array = _numeric_array(values, name)
    sorted_values = np.sort(array)
    # NaN sorts last and the infinities sit at the ends: two looks cover every value.
    if not (math.isfinite(sorted_values[0]) and math.isfinite(sorted_values[-1])):
        _refuse_non_finite(array, name)
    return sorted_values


def _one_per_value(data: Any, n: int, name: str, *, read_as: str, sequence: str) -> np.ndarray:
    """``data`` as a 1-D array with one entry per value; InputError naming ``name`` otherwise."""
    try:
        array = np.asarray(data)
    except Exception as error:  # noqa: BLE001 - any conversion failure is the caller's input
        raise InputError(f"{name}: cannot be read as {read_as} ({error})") from None
    if array.ndim != 1:
        raise InputError(f"{name}: expected {sequence}, got shape {array.shape}")
    if array.shape[0] != n:
        raise InputError(f"{name}: has {array.shape[0]} entries but there are {n} values")
    return array


def label_array(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """``labels`` as an int8 array of length ``n`` with values 1 (OOD), 0 (ID) or -1 (unknown)."""
    array = _one_per_value(labels, n, name, read_as="labels", sequence="a 1-D sequence")
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.bool_)
    ):
        raise InputError(f"{name}: expected 1 (OOD), 0 (ID) or -1 (unknown), got {array.dtype}")
    valid = np.isin(array, (LABEL_OOD, LABEL_ID, LABEL_UNKNOWN))
    if not valid.all():
        first = int(np.flatnonzero(~valid)[0])
        raise InputError(
            f"{name}: entries must be 1 (OOD), 0 (ID) or -1 (unknown); "
            f"index {first} holds {array[first]!r}"
        )
    return array.astype(np.int8)


def _unit_interval(value: Any, name: str) -> float:
    """A float strictly inside (0, 1); InputError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name}: expected a number strictly between 0 and 1, got {value!r}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise InputError(f"{name}: must lie strictly between 0 and 1, got {value!r}")
    return value


# --- partitions of the sorted values -------------------------------------------------------
#
# A threshold splits the sorted values v[0] <= ... <= v[n-1] into kept v[:i] and flagged
# v[i:], for a split index i in 0..n. Equal values are never split, so the possible
# splits are 0 (flag all), every i with v[i-1] < v[i], and n (flag none).


def _possible_splits(sorted_values: np.ndarray) -> np.ndarray:
    """Boolean mask over split indices 0..n: which splits keep equal values together."""
    possible = np.ones(sorted_values.size + 1, dtype=bool)
    np.greater(sorted_values[1:], sorted_values[:-1], out=possible[1:-1])
    return possible


def _threshold_at(sorted_values: np.ndarray, split: int) -> float:
    """The threshold flagging exactly v[split:]: the midpoint of the gap, v[-1] to flag none."""
    n = sorted_values.size
    if split >= n:
        return float(sorted_values[-1])
    if split <= 0:
        return float(np.nextafter(sorted_values[0], -np.inf))
    low, high = float(sorted_values[split - 1]), float(sorted_values[split])
    middle = 0.5 * low + 0.5 * high  # halves first: no overflow near the float limits
    # Adjacent floats have no midpoint; the lower value itself still flags exactly v[split:].
    return middle if low <= middle < high else low


_BLOCK = 1 << 13  # values per block: the working buffers stay in the CPU cache


@dataclass(frozen=True)
class _Centred:
    """Sorted values seen through blocks of ``block`` values: c_k = v[k] - centre, the block
    prefix sums ``prefix[j]`` = sum of c_k for k < j * block, and the total sum of squares."""

    centre: float
    total_ss: float
    prefix: np.ndarray
    block: int


def _centred(sorted_values: np.ndarray, block: int = _BLOCK) -> _Centred:
    """One blocked pass around the median (|mean - median| <= standard deviation, so nothing
    cancels): the mean, the block sums and the total sum of squares, accurate far from 0."""
    n = sorted_values.size
    median = float(sorted_values[n // 2])
    buffer = np.empty(min(block, n))
    sums = np.empty(-(-n // block))
    squares = 0.0
    for j, start in enumerate(range(0, n, block)):
        values = sorted_values[start : start + block]
        around_median = np.subtract(values, median, out=buffer[: values.size])
        sums[j] = around_median.sum()
        squares += float(np.einsum("i,i->", around_median, around_median))  # BLAS dot threads badly here
    total = float(sums.sum())
    shift = total / n  # mean - median
    sizes = np.minimum(block, n - np.arange(sums.size) * block)
    prefix = np.concatenate(([0.0], np.cumsum(sums - sizes * shift)))
    return _Centred(median + shift, max(squares - total * shift, 0.0), prefix, block)


def _between_blocks(sorted_values: np.ndarray, centred: _Centred, blocks=None):
    """Yield (start, score) for the splits i = start+1 .. start+len(score) of each block.

    Within-SS = total - between, and the between-group sum of squares of split i is
    n_l n_r / n (mean_l - mean_r)^2 = n d_i^2 / (n_l n_r), with d_i the prefix sum of the
    centred values (no sums of squares anywhere: accurate under large shifts). ``score`` is
    d_i^2 / (n_l n_r), the between-SS divided by n, and -inf where the split would separate
    equal values. ``blocks`` (ascending; default all) picks the blocks; buffers are reused,
    so the yielded array is overwritten on the next step.
    """
    n = sorted_values.size
    size = min(centred.block, max(n - 1, 1))
    score_buffer, scratch_buffer = np.empty(size), np.empty(size)
    kept_buffer, tie_buffer = np.empty(size), np.empty(size, dtype=bool)
    offsets = np.arange(size, dtype=np.float64)
    for j in range(-(-(n - 1) // centred.block)) if blocks is None else blocks:
        start = int(j) * centred.block
        stop = min(start + centred.block, n - 1)
        size = stop - start
        score, scratch = score_buffer[:size], scratch_buffer[:size]
        kept, ties = kept_buffer[:size], tie_buffer[:size]
        np.subtract(sorted_values[start:stop], centred.centre, out=score)
        score[0] += centred.prefix[j]  # the prefix sum continues from the blocks before
        np.cumsum(score, out=score)
        np.square(score, out=score)
        np.add(offsets[:size], start + 1, out=kept)  # n_l: values kept by each split
        np.subtract(n, kept, out=scratch)
        scratch *= kept
        score /= scratch
        np.equal(sorted_values[start:stop], sorted_values[start + 1 : stop + 1], out=ties)
        np.copyto(score, -np.inf, where=ties)
        yield start, score


def _promising_blocks(sorted_values: np.ndarray, centred: _Centred, tolerance: float) -> np.ndarray:
    """The blocks that may hold a split within ``tolerance`` of the best score; the rest
    provably cannot, so two-means skips their prefix sums (usually most of them).

    Lower bound: the best score at a block boundary that is a possible split. Upper bound in
    block j (splits a+1..b): |d_i| <= |d_a| + (i - a) max|c| and <= |d_b| + (b - i) max|c|,
    max|c| at a block end since the values are sorted; n_l n_r is smallest at an end.
    """
    n = sorted_values.size
    starts = np.arange(0, n - 1, centred.block)
    stops = np.minimum(starts + centred.block, n - 1)
    centre, prefix = centred.centre, centred.prefix
    d_start = np.abs(prefix[: starts.size])
    # d at the last split of each block: the next block's prefix, minus v[n-1] in the last one.
    d_stop = prefix[1 : starts.size + 1].copy()
    if starts.size * centred.block >= n:
        d_stop[-1] = prefix[-1] - (sorted_values[-1] - centre)
    np.abs(d_stop, out=d_stop)
    steepest = np.maximum(np.abs(sorted_values[starts] - centre), np.abs(sorted_values[stops - 1] - centre))
    width = (stops - starts).astype(np.float64)
    d_bound = np.minimum(d_start + width * steepest, d_stop + width * steepest)
    first, last = (starts + 1).astype(np.float64), stops.astype(np.float64)
    smallest_product = np.minimum(first * (n - first), last * (n - last))
    upper = d_bound * d_bound / smallest_product
    upper *= 1.0 + 1e-9  # room for rounding in the blocks' own arithmetic
    boundary = stops[:-1]  # the last split of each block but the final one
    possible = sorted_values[boundary - 1] < sorted_values[boundary]
    lower = -np.inf
    if possible.any():
        d = prefix[1 : starts.size][possible]
        kept = boundary[possible].astype(np.float64)
        lower = float(np.max(d * d / (kept * (n - kept))))
    return np.flatnonzero(upper >= lower - tolerance - 1e-9 * abs(lower))


def _pick(cost: np.ndarray, tolerance: float) -> int:
    """Position of the lowest cost; near-ties (within ``tolerance``) go to the last position,
    the split that flags the fewest values."""
    return int(np.flatnonzero(cost <= cost.min() + tolerance)[-1])


# --- proportion and two-means --------------------------------------------------------------


def _proportion_cost(n: int, p: float) -> tuple[np.ndarray, float]:
    """|flagged count - p n| for every split index 0..n, and the tolerance of a tie."""
    target = p * n
    return np.abs(np.arange(n, -1, -1, dtype=np.float64) - target), 1e-9 * max(1.0, target)


def _check_proportion_size(n: int, p: float) -> None:
    # One expected OOD value (and one expected ID value) is the least a share can place.
    needed = math.ceil(1.0 / min(p, 1.0 - p) - 1e-9)
    if n < needed:
        raise NotEnoughData(
            "proportion", "values", n, needed, hint=f"p={p:g} expects fewer than one value on one side"
        )


def proportion(values: Any, p: float) -> float:
    """The threshold that flags the expected OOD share ``p``: about ``p * n`` values lie above it.

    Equal values are never split: the flagged count is the achievable one closest to
    ``p * n``, the smaller on a tie. The threshold is the midpoint between the last kept
    and the first flagged value (the largest value when nothing is flagged).
    NotEnoughData when ``n * min(p, 1 - p) < 1``.
    """
    p = _unit_interval(p, "p")
    sorted_values = _sorted_finite(values)
    n = sorted_values.size
    _check_proportion_size(n, p)
    target = n - p * n  # the ideal split index, usually inside a group of equal values
    inside = sorted_values[min(int(math.floor(target)), n - 1)]
    # The group of values equal to `inside` spans [low, high): its two ends are the nearest
    # possible splits on either side of the target.
    low = int(np.searchsorted(sorted_values, inside, side="left"))
    high = int(np.searchsorted(sorted_values, inside, side="right"))
    target_flagged, tolerance = p * n, 1e-9 * max(1.0, p * n)
    # Same arithmetic as _proportion_cost, so both pick the same split.
    high_cost, low_cost = abs(float(n - high) - target_flagged), abs(float(n - low) - target_flagged)
    split = high if high_cost <= low_cost + tolerance else low
    return _threshold_at(sorted_values, split)


def _distinct_or_raise(sorted_values: np.ndarray) -> None:
    n = sorted_values.size
    if sorted_values[0] == sorted_values[-1]:  # a single split would separate equal values
        raise NotEnoughData(
            "two-means", "distinct value", 1, 2, hint=f"all {n} values are equal, there is nothing to split"
        )


def two_means(values: Any) -> float:
    """The exact 1-D 2-means (Otsu) threshold: values above it form the OOD group.

    Sorts once and scores every split between distinct values with prefix sums (O(n log n),
    no iterations, no random restarts); blocks of splits that provably cannot hold the
    optimum are skipped, which leaves the sort as most of the cost. Splits whose within-group
    sums of squares tie (within 1e-10 of the total sum of squares) go to the one flagging
    fewer values. The threshold is the midpoint between the largest kept and the smallest
    flagged value.
    NotEnoughData when fewer than two distinct values are given.
    """
    sorted_values = _sorted_finite(values)
    _distinct_or_raise(sorted_values)
    return _threshold_at(sorted_values, _two_means_split(_in_safe_range(sorted_values)))


def _safe_exponent(sorted_values: np.ndarray) -> int:
    """e such that the values times 2^e have squares far from overflow and underflow (0 if
    they already do); scaling by a power of two is exact and keeps order and ties."""
    largest = max(abs(float(sorted_values[0])), abs(float(sorted_values[-1])))
    return 0 if 2.0**-400 <= largest <= 2.0**400 else -math.frexp(largest)[1]


def _in_safe_range(sorted_values: np.ndarray) -> np.ndarray:
    exponent = _safe_exponent(sorted_values)
    return sorted_values if exponent == 0 else np.ldexp(sorted_values, exponent)


def _two_means_split(sorted_values: np.ndarray, block: int = _BLOCK) -> int:
    """The split index of the exact 2-means partition of sorted values (at least two distinct)."""
    centred = _centred(sorted_values, block)
    tolerance = TIE_RTOL * centred.total_ss / sorted_values.size  # in score units (between-SS / n)
    blocks = _promising_blocks(sorted_values, centred, tolerance)
    # Streaming arg-max: `last` is the last split within `tolerance` of the best so far; a
    # later better block replaces it, so it ends as the last near-best split overall.
    best, last = -np.inf, 0
    for start, score in _between_blocks(sorted_values, centred, blocks):
        block_best = float(score.max())
        if block_best == -np.inf or block_best < best - tolerance:
            continue
        best = max(best, block_best)
        last = start + 1 + int(np.flatnonzero(score >= best - tolerance)[-1])
    return last


# --- extreme-value tail (peaks over threshold) ---------------------------------------------


@dataclass(frozen=True)
class TailFit:
    """A generalised Pareto fit of the excesses over ``initial_threshold`` (SPOT, Siffer et al.).

    P(X > initial_threshold + y | X > initial_threshold) = (1 + shape * y / scale)^(-1/shape).
    """

    initial_threshold: float
    initial_quantile: float
    n: int
    n_peaks: int
    shape: float
    scale: float
    log_likelihood: float

    def quantile(self, q: float) -> float:
        """z_q with P(X > z_q) = q: t + scale/shape * ((q n / n_peaks)^(-shape) - 1)."""
        q = _unit_interval(q, "q")
        tail_share = self.n_peaks / self.n
        if q >= tail_share:
            raise InputError(
                f"q: {q:g} is not below the share of values above the initial threshold "
                f"({self.n_peaks}/{self.n} = {tail_share:.4g}); use method 'proportion' for "
                "shares that large, or lower initial_quantile"
            )
        log_ratio = math.log(q * self.n / self.n_peaks)
        if abs(self.shape) < 1e-12:  # the shape -> 0 limit: an exponential tail
            return self.initial_threshold - self.scale * log_ratio
        return self.initial_threshold + self.scale * math.expm1(-self.shape * log_ratio) / self.shape

    def to_dict(self) -> dict[str, Any]:
        return {
            "initial_threshold": self.initial_threshold,
            "initial_quantile": self.initial_quantile,
            "n": self.n,
            "n_peaks": self.n_peaks,
            "shape": self.shape,
            "scale": self.scale,
            "log_likelihood": self.log_likelihood,
        }


def _gpd_profile(excesses: np.ndarray, theta: float) -> tuple[float, float]:
    """Profile log-likelihood of theta = shape/scale (Grimshaw), and the shape it implies."""
    count = excesses.size
    if theta == 0.0:
        mean = float(excesses.mean())
        return -count * math.log(mean) - count, 0.0
    shape = float(np.log1p(theta * excesses).mean())
    if shape == 0.0 or shape / theta <= 0.0:
        return -math.inf, shape
    return -count * math.log(shape / theta) - count * shape - count, shape


def _fit_gpd(excesses: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood (shape, scale, log-likelihood) of a GPD with location 0.

    Grimshaw's reduction: for theta = shape/scale the best shape is mean(log(1 + theta y)),
    leaving a 1-D profile likelihood. It is scanned on a log grid on both sides of 0 and
    refined with bounded Brent around the best point: deterministic, no random starts.
    Shapes below -1 have no maximum (the likelihood is unbounded), so theta stays where the
    implied shape is at least -1.
    """
    from scipy.optimize import brentq, minimize_scalar

    # Fit in units of the mean excess (the shape is scale-free): well conditioned at any magnitude.
    unit = float(excesses.mean())
    excesses = excesses / unit
    y_max = float(excesses.max())
    y_mean = 1.0

    def shape_of(theta: float) -> float:
        return float(np.log1p(theta * excesses).mean())

    # Lowest theta with shape >= -1 (shape grows with theta; -1/y_max is the domain's edge).
    edge = -(1.0 - 1e-12) / y_max
    theta_low = edge
    if shape_of(edge) < -1.0:
        theta_low = brentq(lambda t: shape_of(t) + 1.0, edge, 0.0, xtol=1e-14 / y_max)

    grid = np.concatenate(
        (
            theta_low * np.geomspace(1.0, 1e-6, 50),
            [0.0],
            np.geomspace(1e-6, 1e6, 121) / y_mean,
        )
    )
    profile = np.array([_gpd_profile(excesses, float(t))[0] for t in grid])
    best = int(np.argmax(profile))
    best_theta, best_value = float(grid[best]), float(profile[best])
    for low, high in ((best - 1, best), (best, best + 1)):
        if low < 0 or high >= grid.size:
            continue
        result = minimize_scalar(
            lambda t: -_gpd_profile(excesses, float(t))[0],
            bounds=(float(grid[low]), float(grid[high])),
            method="bounded",
            options={"xatol": 1e-12 * max(abs(grid[low]), abs(grid[high]), 1e-300)},
        )
        if result.success and -float(result.fun) > best_value:
            best_theta, best_value = float(result.x), -float(result.fun)
    log_unit = excesses.size * math.log(unit)  # the density of y / unit is unit times that of y
    if best_theta == 0.0:
        return 0.0, unit, best_value - log_unit
    shape = _gpd_profile(excesses, best_theta)[1]
    return shape, shape / best_theta * unit, best_value - log_unit


def _tail_from_sorted(sorted_values: np.ndarray, initial_quantile: float) -> TailFit:
    n = sorted_values.size
    initial = float(np.quantile(sorted_values, initial_quantile))
    first_peak = int(np.searchsorted(sorted_values, initial, side="right"))
    excesses = sorted_values[first_peak:] - initial
    if excesses.size < MIN_PEAKS:
        raise NotEnoughData(
            "extreme-value", f"values above the initial threshold (quantile {initial_quantile:g})",
            excesses.size, MIN_PEAKS, hint=f"{n} values in all; give more values or lower initial_quantile",
        )
    shape, scale, log_likelihood = _fit_gpd(excesses)
    return TailFit(initial, initial_quantile, n, int(excesses.size), shape, scale, log_likelihood)


def fit_tail(values: Any, initial_quantile: float = DEFAULT_INITIAL_QUANTILE) -> TailFit:
    """Fit the generalised Pareto tail of ``values`` above their ``initial_quantile``."""
    initial_quantile = _unit_interval(initial_quantile, "initial_quantile")
    return _tail_from_sorted(_sorted_finite(values), initial_quantile)


def extreme_value(values: Any, q: float, initial_quantile: float = DEFAULT_INITIAL_QUANTILE) -> float:
    """The threshold exceeded with probability ``q`` under the fitted tail (SPOT's z_q).

    For false-alarm rates far below 1/n, where the empirical quantile has no resolution.
    ``q`` must lie below the share of values above the initial threshold.
    """
    q = _unit_interval(q, "q")
    return fit_tail(values, initial_quantile).quantile(q)


# --- fitting with labels -------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdFit:
    """A fitted threshold and everything needed to store and explain it.

    ``float(fit)`` is the threshold; values strictly above it are flagged.
    """

    threshold: float
    method: str
    parameters: dict[str, Any]
    n: int
    n_flagged: int
    n_labelled_ood: int
    n_labelled_id: int
    false_alarms: int
    misses: int
    used_labels: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_unlabelled(self) -> int:
        return self.n - self.n_labelled_ood - self.n_labelled_id

    @property
    def mistakes(self) -> int:
        """Labelled samples on the wrong side: ID flagged plus OOD not flagged."""
        return self.false_alarms + self.misses

    def counts(self) -> dict[str, int]:
        return {
            "n": self.n,
            "n_flagged": self.n_flagged,
            "n_labelled_ood": self.n_labelled_ood,
            "n_labelled_id": self.n_labelled_id,
            "n_unlabelled": self.n_unlabelled,
            "false_alarms": self.false_alarms,
            "misses": self.misses,
            "mistakes": self.mistakes,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types: threshold, method, parameters, counts, used_labels, details."""
        return {
            "threshold": self.threshold,
            "method": self.method,
            "parameters": dict(self.parameters),
            "counts": self.counts(),
            "used_labels": self.used_labels,
            "details": dict(self.details),
        }

    def explain(self) -> str:
        """One sentence for logs, alerts and the web page."""
        share = self.n_flagged / self.n
        text = (
            f"{self.method} threshold {self.threshold:.6g} flags {self.n_flagged} of {self.n} values "
            f"({share:.2%})"
        )
        if self.used_labels:
            text += (
                f"; labels: {self.n_labelled_ood} OOD, {self.n_labelled_id} ID, {self.mistakes} on the wrong "
                f"side ({self.false_alarms} ID flagged, {self.misses} OOD missed)"
            )
            unsupervised = self.details.get("unsupervised_threshold")
            if unsupervised is not None and unsupervised != self.threshold:
                text += f"; without labels it would be {unsupervised:.6g}"
        return text

    def __float__(self) -> float:
        return self.threshold


def _in_caller_units(sum_of_squares: float, exponent: int) -> float | None:
    """A sum of squares of values scaled by 2^exponent, back in the caller's units; None when
    it lies beyond the float range (values near 1e154 and above)."""
    try:
        return math.ldexp(sum_of_squares, -2 * exponent)
    except OverflowError:
        return None


def _method_parameters(
    method: str, p: float | None, q: float | None, initial_quantile: float | None
) -> dict[str, Any]:
    if method not in METHODS:
        raise InputError(f"method: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    given = {"p": p, "q": q, "initial_quantile": initial_quantile}
    wanted = {"proportion": ("p",), "two-means": (), "extreme-value": ("q", "initial_quantile")}[method]
    for name, value in given.items():
        if name not in wanted and value is not None:
            raise InputError(f"{name}: is not a parameter of method {method!r}")
    if method == "proportion":
        if p is None:
            raise InputError("p: method 'proportion' needs the expected OOD share p, e.g. p=0.05")
        return {"p": _unit_interval(p, "p")}
    if method == "extreme-value":
        if q is None:
            raise InputError("q: method 'extreme-value' needs the target false-alarm rate q, e.g. q=1e-4")
        quantile = DEFAULT_INITIAL_QUANTILE if initial_quantile is None else initial_quantile
        return {"q": _unit_interval(q, "q"), "initial_quantile": _unit_interval(quantile, "initial_quantile")}
    return {}


def fit_threshold(
    values: Any,
    method: str = "two-means",
    labels: Any = None,
    *,
    p: float | None = None,
    q: float | None = None,
    initial_quantile: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> ThresholdFit:
    """Fit a threshold on ``values`` with ``method`` ("proportion" with ``p``, "two-means",
    or "extreme-value" with ``q`` and ``initial_quantile``), steered by ``labels`` if given.

    Labels (1 OOD, 0 ID, -1 unknown, one per value): among all thresholds, keep those with
    the fewest labelled mistakes (ID flagged plus OOD not flagged), then choose among them
    by the method's own criterion: the lowest within-group sum of squares (two-means), the
    flagged count closest to ``p * n`` (proportion), or closest to the count above the
    extreme-value threshold z_q, which is kept as is when the labels allow it. Remaining
    ties flag fewer values. Raises NotEnoughData (keep the previous threshold) when fewer
    than ``min_samples`` values are given or the method's own minimum is not met.
    """
    parameters = _method_parameters(method, p, q, initial_quantile)
    if isinstance(min_samples, bool) or not isinstance(min_samples, numbers.Integral) or min_samples < 1:
        raise InputError(f"min_samples: expected a positive integer, got {min_samples!r}")
    raw = finite_values(values)
    n = raw.size
    label_values = None if labels is None else label_array(labels, n)
    if n < min_samples:
        raise NotEnoughData(method, "values", n, int(min_samples))

    order = np.argsort(raw, kind="stable")
    sorted_values = raw[order]
    possible = _possible_splits(sorted_values)
    details: dict[str, Any] = {}
    if method == "two-means":
        _distinct_or_raise(sorted_values)
        exponent = _safe_exponent(sorted_values)
        scaled = _in_safe_range(sorted_values)
        centred = _centred(scaled)
        cost = np.zeros(n + 1)  # flag-all and flag-none: one group, nothing between
        for start, score in _between_blocks(scaled, centred):
            np.multiply(score, -float(n), out=cost[start + 1 : start + 1 + score.size])
        tolerance = TIE_RTOL * centred.total_ss
    elif method == "proportion":
        _check_proportion_size(n, parameters["p"])
        cost, tolerance = _proportion_cost(n, parameters["p"])
        details["target_flagged"] = parameters["p"] * n
    else:
        tail = _tail_from_sorted(sorted_values, parameters["initial_quantile"])
        z_q = tail.quantile(parameters["q"])
        z_split = int(np.searchsorted(sorted_values, z_q, side="right"))
        cost, tolerance = np.abs(np.arange(n + 1, dtype=np.float64) - z_split), 0.5
        details.update(tail.to_dict(), z_q=z_q)
    cost[~possible] = np.inf

    def threshold_of(split: int) -> float:
        if method == "extreme-value" and split == z_split:
            return z_q  # the labels agree with the tail's own threshold
        return _threshold_at(sorted_values, split)

    unsupervised = _pick(cost, tolerance)
    split = unsupervised
    n_ood = n_id = false_alarms = misses = 0
    if label_values is not None:
        sorted_labels = label_values[order]
        ood_below = np.concatenate(([0], np.cumsum(sorted_labels == LABEL_OOD)))
        id_below = np.concatenate(([0], np.cumsum(sorted_labels == LABEL_ID)))
        n_ood, n_id = int(ood_below[-1]), int(id_below[-1])
        if n_ood + n_id:
            # Split i keeps v[:i]: OOD labels there are misses, ID labels in v[i:] false alarms.
            mistakes = ood_below + (n_id - id_below)
            fewest = mistakes[possible].min()
            split = _pick(np.where(mistakes == fewest, cost, np.inf), tolerance)
            misses = int(ood_below[split])
            false_alarms = int(n_id - id_below[split])
            details["unsupervised_threshold"] = threshold_of(unsupervised)
    if method == "two-means":
        within_ss = max(centred.total_ss + float(cost[split]), 0.0)
        details.update(
            within_ss=_in_caller_units(within_ss, exponent), total_ss=_in_caller_units(centred.total_ss, exponent)
        )
    return ThresholdFit(
        threshold=threshold_of(split),
        method=method,
        parameters={**parameters, "min_samples": int(min_samples)},
        n=n,
        n_flagged=n - split,
        n_labelled_ood=n_ood,
        n_labelled_id=n_id,
        false_alarms=false_alarms,
        misses=misses,
        used_labels=bool(n_ood + n_id),
        details=details,
    )


# --- 1C-Sum re-weighting from labels -------------------------------------------------------


@dataclass(frozen=True)
class SummaryWeights:
    """Weights for the 1C-Sum summary: sum_i weights[i] * (h_i - mu_i) / sigma_i.

    mu_i, sigma_i are the Scorer's own standardisation (its calibration's noise statistics),
    so ``scorer.set_summary_weights(result.weights)`` applies them unchanged. Uniform weights
    (all 1) are the paper's 1C-Sum; ``used_labels`` says whether labels replaced them and
    ``reason`` why (or why not). Fitted weights are scaled so that their absolute values sum
    to the number of members, like the uniform ones. ``offset`` is the fitted model's
    intercept on that scale: the Scorer does not add it (a constant shift changes no ranking),
    and the balanced classifier's own cut is summary > -offset. Thresholds fitted on the old
    summary do not carry over: refit them on the re-weighted values (see ``summary``).
    """

    weights: dict[str, float]
    offset: float
    used_labels: bool
    reason: str
    n_labelled_ood: int
    n_labelled_id: int
    auroc_uniform: float | None = None
    auroc_fitted: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "offset": self.offset,
            "used_labels": self.used_labels,
            "reason": self.reason,
            "n_labelled_ood": self.n_labelled_ood,
            "n_labelled_id": self.n_labelled_id,
            "auroc_uniform": self.auroc_uniform,
            "auroc_fitted": self.auroc_fitted,
        }

    def summary(
        self, indicators: Mapping[str, Any], mean: Mapping[str, float], std: Mapping[str, float]
    ) -> np.ndarray:
        """The re-weighted 1C-Sum of raw member values, as the Scorer computes it (no offset)."""
        total = None
        for member, weight in self.weights.items():
            if member not in indicators:
                raise InputError(f"indicators: has no values for 1C-Sum member {member!r}")
            values = finite_values(indicators[member], f"indicators[{member!r}]")
            mu = _member_statistic(mean, "mean", member, False)
            sigma = _member_statistic(std, "std", member, True)
            term = weight * ((values - mu) / sigma)
            if total is not None and term.size != total.size:
                raise InputError(f"indicators[{member!r}]: has {term.size} values, the others {total.size}")
            total = term if total is None else total + term
        return total


def _member_statistic(mapping: Mapping[str, Any], name: str, member: str, positive: bool) -> float:
    if member not in mapping:
        raise InputError(f"{name}: has no entry for 1C-Sum member {member!r}")
    value = mapping[member]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InputError(f"{name}[{member!r}]: expected a finite number, got {value!r}")
    if positive and float(value) <= 0.0:
        raise InputError(f"{name}[{member!r}]: must be positive, got {value!r}")
    return float(value)


def fit_summary_weights(
    indicators: Mapping[str, Any],
    labels: Any,
    mean: Mapping[str, float],
    std: Mapping[str, float],
    *,
    min_per_class: int = MIN_LABELS_PER_CLASS,
    regularisation: float = 1.0,
) -> SummaryWeights:
    """Re-fit the 1C-Sum weights on labelled samples (paper section 5).

    ``indicators`` maps each 1C-Sum member to its raw values h_i (one per sample),
    ``labels`` holds 1 (OOD), 0 (ID) or -1 (unknown) per sample, ``mean``/``std`` the
    Scorer's standardisation mu_i, sigma_i. With at least ``min_per_class`` labels of each
    kind, a class-balanced L2 logistic regression (inverse strength ``regularisation``)
    is fitted on the members standardised over the labelled samples, and its coefficients
    are mapped back to the Scorer's standardisation. Below that the uniform weights stay.
    """
    from sklearn.linear_model import LogisticRegression

    from monitor.metrics import roc_auc

    if not isinstance(indicators, Mapping) or not indicators:
        raise InputError("indicators: expected a non-empty mapping of 1C-Sum member name -> values")
    members = list(indicators)
    for member in members:
        if member not in INDICATORS:
            raise InputError(
                f"indicators: unknown indicator {member!r}; expected names from {', '.join(INDICATORS)}"
            )
        if member in SUMMARY_MEMBERS_EXCLUDED:
            raise InputError(
                f"indicators: {member!r} is not a 1C-Sum member (excluded: "
                f"{', '.join(sorted(SUMMARY_MEMBERS_EXCLUDED))})"
            )
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, numbers.Integral) or min_per_class < 2:
        raise InputError(f"min_per_class: expected an integer of at least 2, got {min_per_class!r}")
    if isinstance(regularisation, bool) or not isinstance(regularisation, numbers.Real) or not (
        math.isfinite(float(regularisation)) and float(regularisation) > 0
    ):
        raise InputError(f"regularisation: expected a positive finite number, got {regularisation!r}")
    columns = [finite_values(indicators[member], f"indicators[{member!r}]") for member in members]
    n = columns[0].size
    for member, column in zip(members, columns):
        if column.size != n:
            raise InputError(f"indicators[{member!r}]: has {column.size} values, {members[0]!r} has {n}")
    label_values = label_array(labels, n)
    mu = np.array([_member_statistic(mean, "mean", member, False) for member in members])
    sigma = np.array([_member_statistic(std, "std", member, True) for member in members])

    labelled = label_values != LABEL_UNKNOWN
    target = label_values[labelled] == LABEL_OOD
    n_ood, n_id = int(target.sum()), int((~target).sum())
    uniform = {member: 1.0 for member in members}
    if min(n_ood, n_id) < min_per_class:
        return SummaryWeights(
            uniform, 0.0, False,
            f"kept the uniform 1C-Sum weights: {n_ood} OOD and {n_id} ID labels, "
            f"re-weighting needs at least {min_per_class} of each",
            n_ood, n_id,
        )

    raw = np.stack(columns, axis=1)[labelled]
    scorer_space = (raw - mu) / sigma
    data_mean = raw.mean(axis=0)
    data_std = raw.std(axis=0)
    varying = data_std > 0
    if not varying.any():
        return SummaryWeights(
            uniform, 0.0, False,
            "kept the uniform 1C-Sum weights: every member is constant on the labelled samples",
            n_ood, n_id,
        )
    features = (raw[:, varying] - data_mean[varying]) / data_std[varying]
    model = LogisticRegression(C=float(regularisation), class_weight="balanced", max_iter=1000)
    model.fit(features, target.astype(int))
    coefficients = np.zeros(len(members))
    coefficients[varying] = model.coef_[0]
    # logit = sum b_i (h_i - m_i)/s_i + b0, with h_i = mu_i + sigma_i z_i in the Scorer's space.
    weights = np.zeros(len(members))
    weights[varying] = coefficients[varying] * sigma[varying] / data_std[varying]
    shift = (mu[varying] - data_mean[varying]) / data_std[varying]
    offset = float(model.intercept_[0] + np.sum(coefficients[varying] * shift))
    scale = np.abs(weights).sum()
    if not scale > 0:
        return SummaryWeights(
            uniform, 0.0, False, "kept the uniform 1C-Sum weights: the labels carry no signal the model could use",
            n_ood, n_id,
        )
    scale = len(members) / scale
    weights *= scale
    offset *= scale
    constant = [member for member, keep in zip(members, varying) if not keep]
    reason = (
        f"fitted on {n_ood} OOD and {n_id} ID labels "
        f"(class-balanced logistic regression, C={float(regularisation):g})"
    )
    if constant:
        reason += f"; weight 0 for members constant on the labelled samples: {', '.join(constant)}"
    return SummaryWeights(
        weights={member: float(weight) for member, weight in zip(members, weights)},
        offset=offset,
        used_labels=True,
        reason=reason,
        n_labelled_ood=n_ood,
        n_labelled_id=n_id,
        auroc_uniform=roc_auc(scorer_space.sum(axis=1), target.astype(np.int8)),
        auroc_fitted=roc_auc(scorer_space @ weights + offset, target.astype(np.int8)),
    )


# --- thresholds per predicted class --------------------------------------------------------

DEFAULT_MIN_CLASS_SAMPLES = 100
"""fit_class_thresholds gives a class its own threshold from this many samples predicted as it."""


def class_array(predicted: Any, n: int, name: str = "predicted") -> np.ndarray:
    """``predicted`` as an int64 array of length ``n`` of class indices (>= 0)."""
    array = _one_per_value(predicted, n, name, read_as="class indices",
                           sequence="a 1-D sequence of class indices")
    if array.size and (array.dtype == object or not np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{name}: expected integer class indices, got {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        first = int(np.flatnonzero(array < 0)[0])
        raise InputError(f"{name}: class indices must be 0 or more; index {first} holds {int(array[first])}")
    return array


def _threshold_value(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InputError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ClassThresholds:
    """Which threshold judges a sample: its predicted class's own, else the global one.

    ``ClassThresholds(t)`` is the single threshold of old; ``per_class`` maps a predicted
    class index to its own threshold. A sample is flagged when its value lies strictly above
    the threshold that judges it; a NaN value is never flagged (as in the stream).
    """

    global_threshold: float
    per_class: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_threshold", _threshold_value(self.global_threshold, "global_threshold"))
        if not isinstance(self.per_class, Mapping):
            raise InputError(f"per_class: expected a mapping of class index -> threshold, got {self.per_class!r}")
        own = {}
        for key, value in self.per_class.items():
            if isinstance(key, bool) or not isinstance(key, numbers.Integral) or key < 0:
                raise InputError(f"per_class: class indices must be integers of 0 or more, got {key!r}")
            own[int(key)] = _threshold_value(value, f"per_class[{key}]")
        object.__setattr__(self, "per_class", dict(sorted(own.items())))

    def judged_by(self, predicted_class: int | None) -> int | None:
        """The class whose own threshold judges a sample of ``predicted_class``; None: the global one."""
        return predicted_class if predicted_class is not None and predicted_class in self.per_class else None

    def threshold_of(self, predicted_class: int | None) -> float:
        """The threshold that judges a sample predicted as ``predicted_class``."""
        own = self.judged_by(predicted_class)
        return self.global_threshold if own is None else self.per_class[own]

    def thresholds(self, predicted: Any = None, n: int | None = None) -> np.ndarray:
        """One threshold per sample (``predicted``: their classes; None only without own thresholds)."""
        if predicted is None:
            if self.per_class:
                raise InputError("predicted: per-class thresholds need each sample's predicted class")
            return np.full(0 if n is None else n, self.global_threshold)
        classes = class_array(predicted, np.shape(predicted)[0] if n is None else n)
        result = np.full(classes.size, self.global_threshold)
        for own, value in self.per_class.items():
            result[classes == own] = value
        return result

    def judge(self, values: Any, predicted: Any = None) -> np.ndarray:
        """Flagged (bool [N]): each value strictly above the threshold of its predicted class.

        NaN values are never flagged; infinite ones are compared as they are.
        """
        array = _numeric_array(values, "values") if np.size(values) else np.zeros(0)
        cuts = self.thresholds(predicted, array.size)
        with np.errstate(invalid="ignore"):
            return array > cuts

    def describe(self, predicted_class: int | None = None, class_name: str | None = None) -> str:
        """Which threshold judges a sample of ``predicted_class``, in words for the sample page."""
        own = self.judged_by(predicted_class)
        if own is None:
            return f"the global threshold {self.global_threshold:.6g}"
        label = class_name or f"class {own}"
        return f"the threshold of predicted {label}, {self.per_class[own]:.6g}"

    def to_dict(self) -> dict[str, Any]:
        return {"global": self.global_threshold, "per_class": {str(k): v for k, v in self.per_class.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClassThresholds":
        """Inverse of to_dict (JSON object keys are strings)."""
        if not isinstance(data, Mapping) or "global" not in data:
            raise InputError(f"thresholds: expected {{'global': t, 'per_class': {{...}}}}, got {data!r}")
        per_class = data.get("per_class") or {}
        if not isinstance(per_class, Mapping):
            raise InputError(f"thresholds.per_class: expected a mapping, got {per_class!r}")
        converted = {}
        for key, value in per_class.items():
            try:
                converted[int(key)] = value
            except (TypeError, ValueError):
                raise InputError(f"thresholds.per_class: class index {key!r} is not an integer") from None
        return cls(data["global"], converted)


@dataclass(frozen=True)
class ClassThresholdFit:
    """A global fit plus one fit per predicted class that had enough samples.

    ``overall`` is fitted on every value (with every label); ``classes`` holds the own fits;
    ``fallbacks`` says, for each other class seen in the window, why the global threshold
    judges it. ``n_flagged`` counts the values the combined thresholds flag.
    """

    overall: ThresholdFit
    classes: Mapping[int, ThresholdFit]
    fallbacks: Mapping[int, str]
    class_counts: Mapping[int, int]
    min_class_samples: int
    n_flagged: int

    @property
    def thresholds(self) -> ClassThresholds:
        return ClassThresholds(self.overall.threshold, {k: fit.threshold for k, fit in self.classes.items()})

    @property
    def n(self) -> int:
        return self.overall.n

    def counts(self) -> dict[str, Any]:
        return {
            **self.overall.counts(),
            "n_flagged": self.n_flagged,
            "global_n_flagged": self.overall.n_flagged,
            "classes_with_own_threshold": len(self.classes),
            "classes_on_global_threshold": len(self.fallbacks),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds.to_dict(),
            "min_class_samples": self.min_class_samples,
            "n_flagged": self.n_flagged,
            "overall": self.overall.to_dict(),
            "classes": {str(k): fit.to_dict() for k, fit in self.classes.items()},
            "fallbacks": {str(k): reason for k, reason in self.fallbacks.items()},
            "class_counts": {str(k): v for k, v in self.class_counts.items()},
        }

    def explain(self) -> str:
        share = self.n_flagged / self.n
        own = ", ".join(f"class {k} {fit.threshold:.6g} ({fit.n_flagged}/{fit.n})" for k, fit in self.classes.items())
        text = (
            f"{self.overall.method} thresholds per predicted class flag {self.n_flagged} of {self.n} values "
            f"({share:.2%}); own thresholds for {len(self.classes)} of {len(self.class_counts)} classes"
            + (f": {own}" if own else "")
            + f"; the others use the global threshold {self.overall.threshold:.6g}"
        )
        if self.fallbacks:
            text += " (" + "; ".join(f"class {k}: {why}" for k, why in self.fallbacks.items()) + ")"
        return text


def fit_class_thresholds(
    values: Any,
    predicted: Any,
    method: str = "two-means",
    labels: Any = None,
    *,
    p: float | None = None,
    q: float | None = None,
    initial_quantile: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    min_class_samples: int = DEFAULT_MIN_CLASS_SAMPLES,
) -> ClassThresholdFit:
    """One threshold per predicted class with at least ``min_class_samples`` values, the global
    one (fitted on all values, as :func:`fit_threshold`) for the rest.

    Each class's own threshold is fitted by :func:`fit_threshold` on the values predicted as
    that class and their labels only, so labels of a class steer its own threshold (and, with
    every other label, the global one). A class whose own fit is refused (NotEnoughData, e.g.
    all its values equal) falls back to the global threshold, and ``fallbacks`` says why.
    NotEnoughData when the global fit itself is refused: keep the previous thresholds.
    """
    if (
        isinstance(min_class_samples, bool)
        or not isinstance(min_class_samples, numbers.Integral)
        or min_class_samples < 1
    ):
        raise InputError(f"min_class_samples: expected a positive integer, got {min_class_samples!r}")
    raw = finite_values(values)
    classes = class_array(predicted, raw.size)
    label_values = None if labels is None else label_array(labels, raw.size)
    parameters = {"p": p, "q": q, "initial_quantile": initial_quantile}
    overall = fit_threshold(raw, method, label_values, min_samples=min_samples, **parameters)
    flagged = raw > overall.threshold
    own: dict[int, ThresholdFit] = {}
    fallbacks: dict[int, str] = {}
    present, sizes = np.unique(classes, return_counts=True)
    for cls, size in zip(present.tolist(), sizes.tolist()):
        if size < min_class_samples:
            fallbacks[cls] = f"{size} samples, an own threshold needs at least {int(min_class_samples)}"
            continue
        members = classes == cls
        try:
            fit = fit_threshold(
                raw[members], method, None if label_values is None else label_values[members],
                min_samples=int(min_class_samples), **parameters,
            )
        except NotEnoughData as refusal:
            fallbacks[cls] = str(refusal)
            continue
        own[cls] = fit
        flagged[members] = raw[members] > fit.threshold
    return ClassThresholdFit(
        overall=overall,
        classes=own,
        fallbacks=fallbacks,
        class_counts=dict(zip(present.tolist(), sizes.tolist())),
        min_class_samples=int(min_class_samples),
        n_flagged=int(flagged.sum()),
    )
