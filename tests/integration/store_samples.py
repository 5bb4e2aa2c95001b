"""Building store records for the storage tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from monitor.names import INDICATORS
from monitor.store import ImageBlob, ScoredSample, ThresholdRecord
from tests.store_data import register_model

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def scored(
    offset: int,
    model_id: int,
    *,
    topic: str = "images",
    partition: int = 0,
    seconds: float | None = None,
    flagged: bool = False,
    threshold_id: int | None = None,
    predicted_class: int = 0,
    score: float | None = None,
    scores: dict | None = None,
    image: ImageBlob | None = None,
) -> ScoredSample:
    """A scored sample at T0 + `seconds` (default: `offset` seconds) with every indicator set."""
    at = T0 + timedelta(seconds=offset if seconds is None else seconds)
    values = scores if scores is not None else {name: offset + index / 100 for index, name in enumerate(INDICATORS)}
    return ScoredSample(
        topic=topic,
        partition=partition,
        offset=offset,
        sample_key=f"sample-{topic}-{partition}-{offset}",
        model_id=model_id,
        received_at=at - timedelta(milliseconds=20),
        scored_at=at,
        produced_at=at - timedelta(milliseconds=50),
        predicted_class=predicted_class,
        scores=values,
        flagged=flagged,
        score=score if score is not None else values.get("1C-Sum"),
        score_indicator="1C-Sum",
        threshold_id=threshold_id,
        image=image,
    )


def png_blob(marker: bytes = b"") -> ImageBlob:
    return ImageBlob(content_type="image/png", data=b"\x89PNG\r\n\x1a\n" + marker, width=28, height=28)


# Fixtures of the store write tests (import them by name into a test module).
@pytest.fixture
def model(store):
    return register_model(store, "fashion-cnn", "sha256:abc")


@pytest.fixture
def threshold(store, model):
    return store.add_threshold(ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means", value=5.5))
