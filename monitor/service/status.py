"""How a child process (a scoring worker, the scheduler) tells its supervisor how it is, and how
the supervisor sums what its children say into one /healthz, /readyz and /metrics.

A child sends a `Status` over its pipe from the thread that does its work, at most every
`REPORT_EVERY_S` (and at once when asked to), so a child whose loop is stuck stops reporting and
its supervisor's /healthz says so. Metrics travel as the child's Prometheus metric families; the
supervisor sums counters and histograms over its children, keeping those of children that exited
(a counter never goes down when a worker is replaced), and combines gauges by what they mean.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.5

# Gauges that are not summed over the workers: how each is combined (over the live children).
GAUGE_COMBINE: dict[str, str] = {
    "ood_monitor_threshold": "last",
    "ood_monitor_flagged_share": "mean",
    "ood_monitor_last_stored_timestamp_seconds": "max",
    "ood_monitor_job_last_success_timestamp_seconds": "max",
}


@dataclass
class Status:
    """One report of a child: its probes' answers and its metric families."""

    live: tuple[bool, str]
    ready: tuple[bool, list[str]]
    details: dict[str, Any] = field(default_factory=dict)
    families: list[Any] = field(default_factory=list)


class StatusReporter:
    """Child side: `report()` sends a Status when `REPORT_EVERY_S` has passed since the last one."""

    def __init__(self, connection: Any, probes: Any, registry: Any, every_s: float = REPORT_EVERY_S,
                 before: Callable[[], None] | None = None):
        self.connection = connection
        self.probes = probes
        self.registry = registry
        self.every_s = every_s
        self.before = before
        self._next = 0.0
        self.broken = False

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.broken or (not force and now < self._next):
            return
        self._next = now + self.every_s
        if self.before is not None:
            self.before()
        status = Status(self.probes.live(), self.probes.ready(), self.probes.details(),
                        list(self.registry.collect()))
        try:
            self.connection.send(status)
        except (BrokenPipeError, ConnectionError, OSError):  # the supervisor is gone; we die with it
            self.broken = True


# --- merging metric families ----------------------------------------------------------------------


def _key(sample: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def _summable(family: Any) -> bool:
    return family.type in ("counter", "histogram", "summary") or (
        family.type == "gauge" and family.name not in GAUGE_COMBINE)


class Retired:
    """Counters and histograms of children that exited, kept in the sums."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str]] = {}  # name -> (documentation, type)
        self.values: dict[str, dict[tuple, float]] = {}

    def add(self, families: Iterable[Any]) -> None:
        for family in families:
            if family.type not in ("counter", "histogram", "summary"):
                continue
            self.families.setdefault(family.name, (family.documentation, family.type))
            values = self.values.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                values[_key(sample)] = values.get(_key(sample), 0.0) + sample.value


def merge_families(live_children: list[list[Any]], retired: Retired) -> list[Any]:
    """One list of metric families from the children's lists: summed, or combined by GAUGE_COMBINE."""
    from prometheus_client.metrics_core import Metric

    meta: dict[str, tuple[str, str]] = dict(retired.families)
    sums: dict[str, dict[tuple, float]] = {name: dict(values) for name, values in retired.values.items()}
    combined: dict[str, dict[tuple, list[float]]] = {}
    for families in live_children:
        for family in families:
            meta.setdefault(family.name, (family.documentation, family.type))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = _key(sample)
                if _summable(family) or family.type == "info":
                    values = sums.setdefault(family.name, {})
                    # info samples are labels with value 1: the same labels are counted once
                    values[key] = 1.0 if family.type == "info" else values.get(key, 0.0) + sample.value
                else:
                    combined.setdefault(family.name, {}).setdefault(key, []).append(sample.value)
    merged = []
    for name, (documentation, kind) in meta.items():
        family = Metric(name, documentation, kind)
        for (sample_name, labels), value in sorted(sums.get(name, {}).items()):
            family.add_sample(sample_name, dict(labels), value)
        for (sample_name, labels), values in sorted(combined.get(name, {}).items()):
            family.add_sample(sample_name, dict(labels), _combine(GAUGE_COMBINE.get(name, "sum"), values))
        merged.append(family)
    return merged


def _combine(how: str, values: list[float]) -> float:
    finite = [value for value in values if value == value]  # NaN: none known in that child
    if how == "last":
        return values[-1]
    if not finite:
        return float("nan")
    if how == "mean":
        return sum(finite) / len(finite)
    if how == "max":
        return max(finite)
    return sum(finite)
