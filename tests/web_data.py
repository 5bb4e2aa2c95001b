"""Seeding a store for the web tests: everything is written by the service's own writers, as in
production. Scored samples as the stream writes them (store.write), operators' labels
(store.add_label), thresholds by the daemon's configured default and the refit job, alerts,
job runs and drift reports by the scheduled jobs themselves. Times are relative to now,
because the pages show the window that ends now."""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from monitor.names import INDICATORS
from monitor.store import ImageBlob, ScoredSample, Store
from monitor.web.auth import hash_secret
from tests.store_data import register_model

# Logins and tokens of the web tests. Cheap scrypt (N=2**10) keeps the suite fast; the format
# and the check are the production ones.
PASSWORDS = {"vera": ("viewer", "vera-password"), "lena": ("labeller", "lena-password"), "adam": ("admin", "adam-password")}
TOKENS = {"viewer-bot": ("viewer", "token-viewer-0123456789"), "labeller-bot": ("labeller", "token-labeller-0123456789"),
          "admin-bot": ("admin", "token-admin-0123456789")}


def web_settings(report_dir: Path | None = None, **web_overrides):
    """Settings with the test accounts and tokens, hashed as in a real config file; with
    `report_dir`, the [jobs] report directory the web app serves report files from."""
    from monitor.settings import settings_from_mapping

    web = {
        "accounts": [f"{name}:{role}:{hash_secret(password, n=2**10)}" for name, (role, password) in PASSWORDS.items()],
        "tokens": [f"{name}:{role}:{hash_secret(token, n=2**10)}" for name, (role, token) in TOKENS.items()],
        "session_secret": "test-session-secret-of-at-least-32-characters",
        **web_overrides,
    }
    jobs = {"report_dir": str(report_dir)} if report_dir is not None else {}
    return settings_from_mapping({"web": web, "jobs": jobs}, environ={})


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


def png_bytes(seed: int, size: int = 28) -> bytes:
    """A small grey-level PNG that differs per seed (a blob on noise), so thumbnails are told apart."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(6, size - 6, 2)
    radius = rng.uniform(4, 10)
    blob = np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2)))
    pixels = np.clip(255 * (0.8 * blob + 0.2 * rng.random((size, size))), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


@dataclass
class Seeded:
    model_id: int
    active_threshold_id: int
    old_threshold_id: int
    active_threshold: float
    old_threshold: float
    flagged_ids: list[int]
    unflagged_ids: list[int]
    no_image_flagged_id: int
    report_id: int
    missing_report_id: int
    report_text: str
    drifted: list[str]
    now: datetime
    extra: dict = field(default_factory=dict)


def score_values(rng: np.random.Generator, ood: bool, shift: float = 0.0) -> dict[str, float]:
    """Every indicator of one sample: high for OOD-like ones, low for ID-like ones."""
    base = rng.normal(8.0 if ood else shift, 0.5)
    return {name: float(base + index * 0.1 + rng.normal(0, 0.2)) for index, name in enumerate(INDICATORS)}


def _scored(model_id: int, offset: int, at: datetime, values: dict[str, float], threshold, image: bool):
    """A sample as the stream's StoreStep builds it, judged by `threshold` (None: nothing is flagged)."""
    flagged = threshold is not None and values["1C-Sum"] > threshold.value
    return ScoredSample(
        topic="images", partition=0, offset=offset, sample_key=f"img-{offset:04d}", model_id=model_id,
        received_at=at - timedelta(milliseconds=30), scored_at=at, produced_at=at - timedelta(milliseconds=80),
        predicted_class=offset % 10, scores=values, flagged=flagged, score=values["1C-Sum"], score_indicator="1C-Sum",
        threshold_id=threshold.id if threshold is not None else None,
        image=ImageBlob("image/png", png_bytes(offset), 28, 28) if image and flagged else None,
    )


REFERENCE_OOD, REFERENCE_ID = 12, 40
DEFAULT_THRESHOLD = 3.5


def seed_store(store: Store, report_dir: Path, samples: int = 60, flagged_every: int = 3) -> Seeded:
    """A day and a half of a monitored model, as the service writes it:

    - 36 to 30 hours ago, before any threshold: 52 samples, which operators label
      12 OOD and 40 ID; the daemon then installs its configured default threshold;
    - the refit job fits a two-means threshold on them, with those labels (it alerts);
    - the last 12 hours: `samples` samples judged by it, every `flagged_every`-th OOD-like and
      so flagged, with its image (but the first, whose image retention removed); the ID-like
      ones drifted upwards;
    - the drift report job reports on both periods (the older report's file is then removed),
      fails once on a bad report directory (job_failed), and the rate-alert job opens an episode.
    """
    from monitor.jobs import drift_report, scheduler
    from monitor.stream.pipeline import install_default_threshold
    from tests.integration.jobs_data import RecordingPublisher, context_for
    from tests.store_data import register_model

    now = datetime.now(timezone.utc).replace(microsecond=0)
    rng = np.random.default_rng(7)
    model = register_model(store, "fashion-cnn", "sha256:web-tests")

    reference_start = now - timedelta(hours=36)
    reference = [
        _scored(model.id, 10_000 + index, reference_start + timedelta(minutes=7 * index),
                score_values(rng, index < REFERENCE_OOD), None, image=False)
        for index in range(REFERENCE_OOD + REFERENCE_ID)
    ]
    written = store.write(reference)
    for index, sample in enumerate(reference):
        store.add_label(written.sample_ids[sample.position], "OOD" if index < REFERENCE_OOD else "ID",
                        labelled_by="lena", labelled_at=sample.scored_at + timedelta(minutes=5))
    install_default_threshold(store, model.id, "1C-Sum", DEFAULT_THRESHOLD)
    old = store.active_threshold(model.id, "1C-Sum")

    publisher = RecordingPublisher()
    jobs = {"refit_method": "two-means", "refit_window_hours": 48.0, "min_samples": 20,
            "report_dir": str(report_dir), "reference_hours": 24.0, "report_every_hours": 12.0,
            "report_top_samples": 3, "drift_min_samples": 10, "rate_window_s": 13 * 3600, "rate_min_samples": 20}

    def context(job: str, **overrides):
        return replace(context_for(store, publisher, now=now, **{**jobs, **overrides}), runner=f"monitor-{job}:1234")

    refit = scheduler.run_job(context("refit"), "refit")
    assert refit.outcome == "ok", refit.detail
    active = store.active_threshold(model.id, "1C-Sum")

    window_start = now - timedelta(hours=12)
    rows = [
        _scored(model.id, index, window_start + timedelta(seconds=index * 12 * 3600 / samples),
                score_values(rng, index % flagged_every == 0, shift=1.0), active, image=index != 0)
        for index in range(samples)
    ]
    written = store.write(rows)
    ids = [written.sample_ids[row.position] for row in rows]
    flagged_ids = [ids[i] for i, row in enumerate(rows) if row.flagged]
    unflagged_ids = [ids[i] for i, row in enumerate(rows) if not row.flagged]
    assert flagged_ids == [ids[i] for i in range(samples) if i % flagged_every == 0], "the refit separates the groups"

    report_dir.mkdir(parents=True, exist_ok=True)
    older = drift_report.make_report(context("drift_report"), reference_start, now - timedelta(hours=24))
    older.path.unlink()  # removed since: the page must say so
    blocked = report_dir.parent / f"{report_dir.name}-blocked"
    blocked.write_text("a file where a directory should be")
    failed = scheduler.run_job(context("drift_report", report_dir=str(blocked)), "drift_report")
    assert failed.outcome == "failed", failed.detail
    latest = drift_report.make_report(context("drift_report"), window_start, now)
    assert latest.drifted, "the ID-like samples moved up: the report finds drift"
    scheduler.run_job(context("rate_alert"), "rate_alert")
    retention = scheduler.run_job(context("retention"), "retention")
    assert retention.outcome in ("ok", "skipped"), retention.detail
    assert {kind for kind, _ in publisher.published} == {"threshold_changed", "drift", "job_failed", "ood_rate"}
    return Seeded(
        model_id=model.id, active_threshold_id=active.id, old_threshold_id=old.id, active_threshold=active.value,
        old_threshold=old.value, flagged_ids=flagged_ids, unflagged_ids=unflagged_ids, no_image_flagged_id=ids[0],
        report_id=latest.report.id, missing_report_id=older.report.id, report_text=latest.path.read_text("utf-8"),
        drifted=list(latest.drifted), now=now,
    )
