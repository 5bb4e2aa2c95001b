"""The two result tables of the OOD evaluation, with spreads over seeds and bootstrap intervals.

Input: for every trained model and every OOD set, the scores of each row (indicator, 1C-Sum,
supervised reference) on the *test halves* of the ID and OOD samples (`SetScores`): every
row of a table is scored on the same images. Output: plain dicts, ready for JSON.

* `PAPER`: the paper's protocol as printed in its tables 4 and 5: its 20 rows (18
  indicators, the supervised linear SVM, 1C-Sum; no IN-DSS-EXT) and no Uniform set.
* `EXTENDED`: the project's view: all 19 indicators (with IN-DSS-EXT), the Uniform set.

For each architecture: per set and row, the mean auROC over its seeds, their spread
(sample standard deviation) and a bootstrap interval that resamples both the seeds and the
test images (`monitor.evaluation.intervals`); the average rank over the sets (ranks of the
seed-averaged auROC per set, 1 = best, as the paper's table 5) with its interval. Pooled:
the mean of the architectures (auROC and average rank), with the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from monitor.errors import InputError
from monitor.evaluation import intervals
from monitor.names import INDICATORS, SUMMARY

SUPERVISED = "supervised"

# The paper's rows, in the order of its table 4.
PAPER_ROWS: tuple[str, ...] = (
    "ODIN", "T1000", "MP", "H", "NORM", "NORM+", "ACT", "ACT+", "PROJ", "ANG", "ANG++",
    "IN-DMS", "IN-DMS-AOS", "IN-DSS", "DMS", "DMS-AOS", "DSS", "DSS-EXT", SUPERVISED, SUMMARY,
)
EXTENDED_ROWS: tuple[str, ...] = PAPER_ROWS[:14] + ("IN-DSS-EXT",) + PAPER_ROWS[14:]
# The supervised reference learns from the paper's 18 indicators (the same SVM in both tables).
SUPERVISED_FEATURES: tuple[str, ...] = tuple(r for r in PAPER_ROWS if r not in (SUPERVISED, SUMMARY))
assert set(EXTENDED_ROWS) == set(INDICATORS) | {SUPERVISED}


@dataclass(frozen=True)
class TableSpec:
    key: str
    title: str
    rows: tuple[str, ...]
    excluded_sets: tuple[str, ...]  # far-OOD sets left out of this table

    def sets(self, available: Sequence[str]) -> list[str]:
        return [s for s in available if s not in self.excluded_sets]

    @property
    def sample_free(self) -> tuple[str, ...]:
        return tuple(r for r in self.rows if r != SUPERVISED)


PAPER = TableSpec("paper", "The paper's protocol: its 20 rows, no Uniform set, linear SVM reference", PAPER_ROWS, ("Uniform",))
EXTENDED = TableSpec("extended", "Extended: all 19 indicators, every set", EXTENDED_ROWS, ())
TABLES: tuple[TableSpec, ...] = (PAPER, EXTENDED)


@dataclass
class SetScores:
    """One model against one OOD set: each row's values on the test halves."""

    id: Mapping[str, np.ndarray]
    ood: Mapping[str, np.ndarray]


def _interval(point: np.ndarray, draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low, high = intervals.percentile_interval(draws, level, axis=0)
    return point, low, high


def _entry(value: float, low: float, high: float, **extra) -> dict:
    return {"value": float(value), "low": float(low), "high": float(high), **extra}


def _summary_best(spec: TableSpec, point_ranks: np.ndarray, draw_ranks: np.ndarray) -> dict:
    """Which sample-free row has the best (lowest) average rank, and in what share of the
    draws 1C-Sum's is the lowest of the sample-free rows (ties count as best)."""
    free = [spec.rows.index(r) for r in spec.sample_free]
    summary = spec.rows.index(SUMMARY)
    best = spec.rows[free[int(np.argmin(point_ranks[free]))]]
    others = [i for i in free if i != summary]
    share = float(np.mean(draw_ranks[:, summary] <= draw_ranks[:, others].min(axis=1)))
    return {"best_sample_free": best, "summary_best_share": share}


@dataclass
class Resampled:
    """Point and bootstrap auROCs of every row (EXTENDED_ROWS order) for every model and set,
    computed once and shared by both tables."""

    rows: list[str]
    sets: list[str]
    draws: int
    point: dict[str, np.ndarray]  # architecture -> [S models, T sets, M rows]
    mean_draws: dict[str, np.ndarray]  # architecture -> [B, T, M]: seed-resampled mean over its models
    near_point: dict[str, np.ndarray]  # architecture -> [M]
    near_draws: dict[str, np.ndarray]  # architecture -> [B, M]


def resample(
    runs: Mapping[str, Sequence[Mapping[str, SetScores]]],
    sets: Sequence[str],
    draws: int,
    seed: int = 0,
    near: Mapping[str, SetScores] | None = None,
) -> Resampled:
    """runs: architecture -> one {set name -> SetScores} per trained model (seed), every
    architecture with the same sets; near: architecture -> SetScores of its held-out-classes
    model (its own ID set), shown beside the tables, not in the average rank."""
    if not runs or not sets:
        raise InputError("the tables need at least one model and one OOD set")
    rows, sets = list(EXTENDED_ROWS), list(sets)
    rng = np.random.default_rng(seed)
    result = Resampled(rows, sets, draws, {}, {}, {}, {})
    for architecture, models in runs.items():
        point = np.empty((len(models), len(sets), len(rows)))
        resampled = np.empty((len(models), len(sets), draws, len(rows)))  # [S, T, B, M]
        for s, model in enumerate(models):
            for t, name in enumerate(sets):
                scores = model[name]
                point[s, t], resampled[s, t] = intervals.paired_auroc_draws(scores.id, scores.ood, rows, draws, rng)
        picks = intervals.seed_draws(len(models), draws, rng)  # [B, S]
        result.point[architecture] = point
        result.mean_draws[architecture] = np.mean(
            [resampled[picks[:, k], :, np.arange(draws), :] for k in range(len(models))], axis=0
        )
    for architecture, scores in (near or {}).items():
        result.near_point[architecture], result.near_draws[architecture] = intervals.paired_auroc_draws(
            scores.id, scores.ood, rows, draws, rng
        )
    return result


def compute_table(spec: TableSpec, resampled: Resampled, level: float = intervals.DEFAULT_LEVEL) -> dict:
    """The table `spec` (its rows, its sets) from the shared resamples."""
    sets = spec.sets(resampled.sets)
    if not sets:
        raise InputError(f"table {spec.key!r}: none of its sets was evaluated")
    rows = list(spec.rows)
    m_index = [resampled.rows.index(r) for r in rows]
    t_index = [resampled.sets.index(s) for s in sets]
    result: dict = {
        "key": spec.key, "title": spec.title, "rows": rows, "sets": sets, "draws": resampled.draws, "level": level,
        "architectures": {},
    }
    arch_point, arch_draws, arch_rank_point, arch_rank_draws = [], [], [], []
    for architecture, all_point in resampled.point.items():
        point = all_point[:, t_index][:, :, m_index]  # [S, T, M]
        mean_draws = resampled.mean_draws[architecture][:, t_index][:, :, m_index]  # [B, T, M]
        mean, spread = intervals.mean_and_spread(point, axis=0)  # [T, M]
        low, high = intervals.percentile_interval(mean_draws, level, axis=0)
        rank_point = intervals.rank_rows(mean).mean(axis=0)  # [M]
        rank_draws = intervals.rank_rows(mean_draws).mean(axis=1)  # [B, M]
        rank_low, rank_high = intervals.percentile_interval(rank_draws, level, axis=0)
        result["architectures"][architecture] = {
            "models": len(point),
            "auroc": {
                name: {
                    row: _entry(mean[t, m], low[t, m], high[t, m], spread=float(spread[t, m]),
                                per_model=[float(v) for v in point[:, t, m]])
                    for m, row in enumerate(rows)
                }
                for t, name in enumerate(sets)
            },
            "average_rank": {row: _entry(rank_point[m], rank_low[m], rank_high[m]) for m, row in enumerate(rows)},
            **_summary_best(spec, rank_point, rank_draws),
        }
        arch_point.append(point)
        arch_draws.append(mean_draws)
        arch_rank_point.append(rank_point)
        arch_rank_draws.append(rank_draws)

    # Pooled: every architecture weighs the same.
    pooled_mean = np.mean([p.mean(axis=0) for p in arch_point], axis=0)  # [T, M]
    all_models = np.concatenate(arch_point)  # [all models, T, M]
    _, pooled_spread = intervals.mean_and_spread(all_models, axis=0)
    pooled_draws = np.mean(arch_draws, axis=0)  # [B, T, M]
    low, high = intervals.percentile_interval(pooled_draws, level, axis=0)
    rank_point = np.mean(arch_rank_point, axis=0)
    rank_draws = np.mean(arch_rank_draws, axis=0)
    rank_low, rank_high = intervals.percentile_interval(rank_draws, level, axis=0)
    result["pooled"] = {
        "models": int(len(all_models)),
        "auroc": {
            name: {
                row: _entry(pooled_mean[t, m], low[t, m], high[t, m], spread=float(pooled_spread[t, m]))
                for m, row in enumerate(rows)
            }
            for t, name in enumerate(sets)
        },
        "average_rank": {row: _entry(rank_point[m], rank_low[m], rank_high[m]) for m, row in enumerate(rows)},
        **_summary_best(spec, rank_point, rank_draws),
    }
    if resampled.near_point:
        result["near_ood"] = {}
        for architecture, all_point in resampled.near_point.items():
            point, draws = all_point[m_index], resampled.near_draws[architecture][:, m_index]
            low, high = intervals.percentile_interval(draws, level, axis=0)
            ranks = intervals.rank_rows(point)
            rank_low, rank_high = intervals.percentile_interval(intervals.rank_rows(draws), level, axis=0)
            result["near_ood"][architecture] = {
                "auroc": {row: _entry(point[m], low[m], high[m]) for m, row in enumerate(rows)},
                "rank": {row: _entry(ranks[m], rank_low[m], rank_high[m]) for m, row in enumerate(rows)},
            }
    return result


def goal(table: dict) -> dict:
    """The evaluation's goal: 1C-Sum has the best average rank among the sample-free rows on
    every architecture (as the paper's table 5 reports for its networks)."""
    per_architecture = {
        architecture: {
            "best_sample_free": entry["best_sample_free"],
            "summary_rank": entry["average_rank"][SUMMARY],
            "summary_best_share": entry["summary_best_share"],
            "met": entry["best_sample_free"] == SUMMARY,
        }
        for architecture, entry in table["architectures"].items()
    }
    return {
        "goal": "1C-Sum has the best average rank among the sample-free rows on every architecture",
        "table": table["key"],
        "per_architecture": per_architecture,
        "met": all(v["met"] for v in per_architecture.values()),
    }

