"""Scored samples, settings and contexts for the scheduled-jobs tests."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import numpy as np

from monitor.jobs.alerts import AlertSink
from monitor.jobs.scheduler import JobContext
from monitor.names import INDICATORS
from monitor.settings import settings_from_mapping
from monitor.store import ImageBlob, ScoredSample
from monitor.store.records import ThresholdRecord

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


class RecordingPublisher:
    """Collects what the jobs publish (for tests that check the store side; broker tests use Kafka).

    `unreachable = True` makes it fail like a dead broker: a real one takes 30 s to time out.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.unreachable = False

    def publish_alert(self, kind: str, payload: dict[str, Any]) -> None:
        if self.unreachable:
            raise ConnectionError("alerts broker unreachable")
        self.published.append((kind, payload))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.published]


def job_settings(url: str, sections: dict[str, dict] | None = None, **jobs: Any):
    return settings_from_mapping({"store": {"url": url}, "jobs": jobs, **(sections or {})}, environ={})


def context_for(store, publisher=None, now: datetime = NOW, sections: dict[str, dict] | None = None,
                **jobs: Any) -> JobContext:
    settings = job_settings(str(store.engine.url.render_as_string(hide_password=False)), sections, **jobs)
    return JobContext(settings=settings, store=store, alerts=AlertSink(store, publisher),
                      runner="test", now=lambda: now)


def png_bytes(value: float, seed: int, size: int = 28) -> bytes:
    """A small grey-level PNG: a smooth blob for ID-like values, more noise the higher `value`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = np.linspace(-1, 1, size)
    blob = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) * 3)
    noise_share = float(np.clip(value / 10, 0, 1))
    pixels = (1 - noise_share) * blob + noise_share * rng.uniform(0, 1, (size, size))
    buffer = io.BytesIO()
    Image.fromarray((255 * pixels).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_scores(store, model_id: int, values: Sequence[float], *, end: datetime = NOW,
                 span: timedelta = timedelta(hours=1), first_offset: int = 0, flagged: Sequence[bool] | None = None,
                 threshold_id: int | None = None, shifts: dict[str, float] | None = None,
                 images: bool = False, seed: int = 0, key_prefix: str = "s",
                 predicted: Sequence[int] | None = None) -> list[int]:
    """Samples spread evenly over [end - span, end); `values` go to every indicator (plus a per-
    indicator offset, and `shifts[name]` added to that indicator). Predicted classes: `predicted`,
    else the index modulo 10. Returns the new sample ids."""
    rng = np.random.default_rng(seed)
    count = len(values)
    step = span / max(count, 1)
    records = []
    for index, value in enumerate(values):
        scores = {name: float(value) + 0.01 * position + (shifts or {}).get(name, 0.0)
                  + 0.05 * float(rng.standard_normal())
                  for position, name in enumerate(INDICATORS)}
        is_flagged = bool(flagged[index]) if flagged is not None else False
        records.append(ScoredSample(
            topic="images", partition=0, offset=first_offset + index, sample_key=f"{key_prefix}{first_offset + index}",
            model_id=model_id, received_at=end - span + step * index, scored_at=end - span + step * index,
            predicted_class=int(predicted[index]) if predicted is not None else index % 10, scores=scores, flagged=is_flagged,
            score=scores["1C-Sum"], score_indicator="1C-Sum",
            threshold_id=threshold_id if is_flagged else None,
            image=ImageBlob("image/png", png_bytes(value, seed=first_offset + index)) if images else None,
        ))
    result = store.write(samples=records)
    return [result.sample_ids[record.position] for record in records]


def mixture(n_id: int, n_ood: int, *, ood_mean: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ID-like N(0, 1) and OOD-like N(ood_mean, 1) values, shuffled; and 1 where OOD."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.0, 1.0, n_id), rng.normal(ood_mean, 1.0, n_ood)])
    truth = np.concatenate([np.zeros(n_id, dtype=int), np.ones(n_ood, dtype=int)])
    order = rng.permutation(values.size)
    return values[order], truth[order]


def add_threshold(store, model_id: int, value: float, method: str = "manual") -> int:
    return store.add_threshold(ThresholdRecord(model_id=model_id, indicator="1C-Sum", method=method,
                                               value=value, fitted_by="test")).id


def per_class_policy(store, model_id: int, *, now: datetime = NOW, seed: int = 5) -> tuple[Any, dict[str, int]]:
    """A window where predicted class 1 sits higher than class 0 (class 2: too few samples for an
    own threshold), fitted by the re-fit job with `[thresholds] per_class`; then two flagged
    samples judged by that policy, one of class 1 (its own threshold) and one of class 2 (the
    global one). Returns the active threshold row and those samples' ids by name."""
    from monitor.jobs.refit import refit

    rng = np.random.default_rng(seed)
    parts = [(0, rng.normal(0, 0.7, 300)), (0, rng.normal(10, 0.5, 30)),
             (1, rng.normal(3, 0.7, 300)), (1, rng.normal(12, 0.5, 30)), (2, rng.normal(1, 0.7, 20))]
    values = np.concatenate([part for _, part in parts])
    predicted = np.concatenate([np.full(part.size, cls) for cls, part in parts])
    order = rng.permutation(values.size)
    write_scores(store, model_id, values[order], predicted=predicted[order], end=now - timedelta(minutes=5))
    context = context_for(store, RecordingPublisher(), now=now, refit_method="two-means",
                          sections={"thresholds": {"per_class": True, "min_class_samples": 50}})
    result = refit(context)
    assert result.fitted and result.threshold.class_thresholds is not None, result.message
    ids = write_scores(store, model_id, [15.0, 15.0], predicted=[1, 2], flagged=[True, True],
                       threshold_id=result.threshold.id, end=now, span=timedelta(minutes=1),
                       first_offset=values.size, key_prefix="judged")
    return result.threshold, {"class": ids[0], "global": ids[1]}
