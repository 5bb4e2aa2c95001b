"""Seeding a store for the web tests and benchmark: scored samples, real PNG images, thresholds,
labels, alerts, job runs and a drift report file. Times are relative to now, because the pages
show the window that ends now."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from monitor.names import INDICATORS
from monitor.store import ImageBlob, ScoredSample, Store, ThresholdRecord
from monitor.web.auth import hash_secret

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
    flagged_ids: list[int]
    unflagged_ids: list[int]
    no_image_flagged_id: int
    report_id: int
    missing_report_id: int
    report_text: str
    now: datetime
    extra: dict = field(default_factory=dict)


def score_values(rng: np.random.Generator, flagged: bool) -> dict[str, float]:
    base = rng.normal(5.0 if flagged else 0.0, 1.0)
    return {name: float(base + index * 0.1 + rng.normal(0, 0.2)) for index, name in enumerate(INDICATORS)}


def seed_store(store: Store, report_dir: Path, samples: int = 60, flagged_every: int = 3) -> Seeded:
    """`samples` scored over the last 12 hours, every `flagged_every`-th flagged (with its image)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rng = np.random.default_rng(7)
    model = store.register_model("fashion-cnn", "sha256:web-tests", {"size": [28, 28]})
    old = store.add_threshold(
        ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="proportion", value=3.5,
                        parameters={"p": 0.05}, counts={"n": 5000, "flagged": 250},
                        window_start=now - timedelta(days=2), window_end=now - timedelta(days=1), fitted_by="scheduler")
    )
    active = store.add_threshold(
        ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means", value=2.5,
                        counts={"n": 6000, "flagged": 300, "labelled_ood": 12, "labelled_id": 40},
                        window_start=now - timedelta(days=1), window_end=now, fitted_by="scheduler")
    )
    rows = []
    for index in range(samples):
        flagged = index % flagged_every == 0
        values = score_values(rng, flagged)
        at = now - timedelta(hours=12) + timedelta(seconds=index * 12 * 3600 / samples)
        keep_image = flagged and index != 0  # the first flagged one lost its image (retention)
        rows.append(ScoredSample(
            topic="images", partition=0, offset=index, sample_key=f"img-{index:04d}", model_id=model.id,
            received_at=at - timedelta(milliseconds=30), scored_at=at, produced_at=at - timedelta(milliseconds=80),
            predicted_class=index % 10, scores=values, flagged=flagged, score=values["1C-Sum"],
            score_indicator="1C-Sum", threshold_id=active.id if flagged else None,
            image=ImageBlob("image/png", png_bytes(index), 28, 28) if keep_image else None,
        ))
    written = store.write(rows)
    ids = [written.sample_ids[row.position] for row in rows]
    flagged_ids = [ids[i] for i in range(samples) if i % flagged_every == 0]
    unflagged_ids = [ids[i] for i in range(samples) if i % flagged_every != 0]
    for kind, payload in (("flagged", {"sample_key": "img-0003", "score": 5.1}),
                          ("new_threshold", {"indicator": "1C-Sum", "value": 2.5}),
                          ("ood_rate", {"rate": 0.33, "expected": 0.05})):
        store.add_alert(kind, payload)
    for job, outcome, error in (("refit", "ok", None), ("drift_report", "failed", "disk full"),
                                ("retention", "skipped", None)):
        run = store.start_job_run(job, runner=f"monitor-{job}:1234")
        store.finish_job_run(run.id, outcome, error=error)
    report_dir.mkdir(parents=True, exist_ok=True)
    report_path = report_dir / "drift-report-1.html"
    report_text = "<!doctype html><html><body><h1>Drift report</h1><p>Share flagged rose to 33 %.</p></body></html>"
    report_path.write_text(report_text, encoding="utf-8")
    report = store.add_report(now - timedelta(days=1), now, {"flagged_share": 0.33, "samples": samples},
                              file_path=str(report_path))
    missing = store.add_report(now - timedelta(days=2), now - timedelta(days=1), {"samples": 0},
                               file_path=str(report_dir / "removed.html"))
    return Seeded(
        model_id=model.id, active_threshold_id=active.id, old_threshold_id=old.id, flagged_ids=flagged_ids,
        unflagged_ids=unflagged_ids, no_image_flagged_id=ids[0], report_id=report.id, missing_report_id=missing.id,
        report_text=report_text, now=now,
    )
