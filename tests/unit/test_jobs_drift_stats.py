"""Drift statistics of the report: Holm correction and the drift rule."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.reports.drift import compare_indicators, holm_adjust


def test_holm_adjusts_like_the_step_down_procedure():
    # Sorted p: 0.01, 0.02, 0.03, 0.04 -> 4*0.01, max(0.04, 3*0.02), max(0.06, 2*0.03), max(0.06, 0.04).
    assert holm_adjust([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0]), "capped at 1"


def test_a_shifted_indicator_drifts_and_a_stable_one_does_not():
    rng = np.random.default_rng(0)
    reference = {"MP": rng.normal(0, 1, 2000), "DMS": rng.normal(0, 1, 2000)}
    period = {"MP": rng.normal(0.5, 1, 2000), "DMS": rng.normal(0, 1, 2000)}
    result = {entry.indicator: entry for entry in
              compare_indicators(period, reference, alpha=0.01, min_effect=0.1, min_samples=30)}
    assert result["MP"].drifted and result["MP"].adjusted_p_value < 1e-10
    assert not result["DMS"].drifted
    assert result["DMS"].adjusted_p_value >= result["DMS"].p_value


def test_a_significant_but_tiny_shift_is_not_called_drift():
    rng = np.random.default_rng(1)
    reference = {"MP": rng.normal(0, 1, 200_000)}
    period = {"MP": rng.normal(0.05, 1, 200_000)}
    [entry] = compare_indicators(period, reference, alpha=0.01, min_effect=0.1, min_samples=30)
    assert entry.adjusted_p_value < 0.01 and entry.statistic < 0.1 and not entry.drifted


def test_too_few_values_are_reported_not_tested():
    [entry] = compare_indicators({"MP": np.array([1.0, np.nan, 2.0])}, {"MP": np.arange(100.0)},
                                 alpha=0.01, min_effect=0.1, min_samples=30)
    assert entry.statistic is None and not entry.drifted and "fewer than 30" in entry.reason
