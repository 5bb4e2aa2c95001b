"""Drift statistics: each indicator in a period against a reference window.

Two-sample Kolmogorov-Smirnov per indicator, then Holm's step-down correction over all the
indicators compared (one report tests up to 20 hypotheses at once; Holm controls the
family-wise error rate at `alpha` without assuming the indicators are independent, which
they are not). An indicator drifts when its Holm-adjusted p-value is below `alpha` AND its
KS statistic reaches `min_effect`: on busy streams even a negligible shift becomes
"significant", and operators should only be woken by a shift large enough to matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class IndicatorDrift:
    indicator: str
    period_count: int
    reference_count: int
    statistic: float | None  # KS D: largest gap between the two empirical CDFs
    p_value: float | None
    adjusted_p_value: float | None  # Holm-corrected over the indicators compared
    drifted: bool
    reason: str  # why it was not compared, or an empty string


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, monotone, capped at 1, in the input order."""
    count = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(count)
    running_max = 0.0
    for rank, index in enumerate(order):
        running_max = max(running_max, (count - rank) * p_values[index])
        adjusted[index] = min(1.0, running_max)
    return adjusted.tolist()


def compare_indicators(
    period: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    alpha: float,
    min_effect: float,
    min_samples: int,
) -> list[IndicatorDrift]:
    """KS test of every indicator present in both windows; NaNs (unavailable values) dropped."""
    compared: list[tuple[str, int, int, float, float]] = []
    skipped: list[IndicatorDrift] = []
    for name, values in period.items():
        current = _finite(values)
        baseline = _finite(reference.get(name, np.empty(0)))
        if len(current) < min_samples or len(baseline) < min_samples:
            skipped.append(
                IndicatorDrift(
                    name, len(current), len(baseline), None, None, None, False,
                    f"fewer than {min_samples} values in the period ({len(current)}) "
                    f"or the reference ({len(baseline)})",
                )
            )
            continue
        result = stats.ks_2samp(current, baseline, alternative="two-sided", method="auto")
        compared.append((name, len(current), len(baseline), float(result.statistic), float(result.pvalue)))
    adjusted = holm_adjust([p for *_, p in compared]) if compared else []
    results = [
        IndicatorDrift(
            name, n_period, n_reference, statistic, p_value, adjusted_p,
            adjusted_p < alpha and statistic >= min_effect, "",
        )
        for (name, n_period, n_reference, statistic, p_value), adjusted_p in zip(compared, adjusted)
    ]
    order = {name: index for index, name in enumerate(period)}
    return sorted(results + skipped, key=lambda drift: order[drift.indicator])


def _finite(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]
