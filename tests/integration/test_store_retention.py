"""Retention: old image bytes and rows go, in bounded chunks, and the counts say what went."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.errors import InputError
from monitor.store import QueueQuery, RejectRecord, RetentionPolicy, ThresholdRecord
from tests.integration.store_samples import T0, png_blob, scored
from tests.store_data import job_failed_alert, register_model

pytestmark = pytest.mark.integration  # the store fixtures run on the real PostgreSQL too


@pytest.fixture
def filled(store):
    """30 samples one hour apart (the newest 29 h after T0), all with images; a label on the oldest."""
    model = register_model(store, "cnn", "sha256:1")
    threshold = store.add_threshold(ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means", value=1.0))
    store.write([scored(i, model.id, seconds=i * 3600, flagged=True, threshold_id=threshold.id, image=png_blob())
                 for i in range(30)])
    oldest = store.find_sample(scored(0, model.id).position)
    store.add_label(oldest, "OOD", "alice")
    return model, oldest


def image_count(store) -> int:
    [model] = store.list_models()
    page = store.flagged_queue(model.id, QueueQuery(per_page=1000))
    return sum(item.has_image for item in page.items)


def test_images_older_than_the_limit_are_deleted_and_samples_kept(store, filled):
    now = T0 + timedelta(hours=30)

    result = store.purge(RetentionPolicy(image_max_age_s=10 * 3600, chunk_size=7), now=now)

    assert result.images == 20 and result.samples == 0  # kept: hours 20..29, i.e. newer than now - 10 h
    assert image_count(store) == 10
    assert store.count_samples() == 30


def test_only_the_newest_images_are_kept_by_count(store, filled):
    result = store.purge(RetentionPolicy(image_max_count=4, chunk_size=3), now=T0)

    assert result.images == 26
    [model] = store.list_models()
    kept = [item.score for item in store.flagged_queue(model.id, QueueQuery(per_page=1000)).items if item.has_image]
    assert len(kept) == 4


def test_old_samples_go_with_their_images_and_labels(store, filled):
    model, oldest = filled
    now = T0 + timedelta(hours=30)

    result = store.purge(RetentionPolicy(sample_max_age_s=5 * 3600, chunk_size=4), now=now)

    assert result.samples == 25
    assert store.count_samples() == 5
    assert store.get_sample(oldest) is None
    assert store.label_history(oldest) == []
    assert image_count(store) == 5


def test_sample_count_limit_keeps_the_newest(store, filled):
    model, _ = filled

    result = store.purge(RetentionPolicy(sample_max_count=12, chunk_size=5), now=T0)

    assert result.samples == 18
    window = store.window_scores(model.id, "MP")
    assert window.start == T0 + timedelta(hours=18)
    assert store.purge(RetentionPolicy(sample_max_count=12), now=T0).samples == 0  # nothing more to do


def test_rejects_alerts_and_job_runs_expire_by_age(store, filled):
    rejects = [RejectRecord(topic="t", partition=0, offset=i, sample_key="k", reason="corrupt", detail="",
                            size=1, received_at=T0 + timedelta(hours=i)) for i in range(6)]
    store.write(rejects=rejects)
    store.add_alert(job_failed_alert(at=T0), created_at=T0)
    store.add_alert(job_failed_alert(at=T0 + timedelta(hours=5)), created_at=T0 + timedelta(hours=5))
    store.start_job_run("refit", started_at=T0)

    result = store.purge(RetentionPolicy(reject_max_age_s=3 * 3600, alert_max_age_s=3 * 3600, job_run_max_age_s=3600),
                         now=T0 + timedelta(hours=6))

    assert (result.rejects, result.alerts, result.job_runs, result.samples) == (3, 1, 1, 0)
    # The three older rejects are gone (a replay stores them again), the three newer ones kept.
    assert store.write(rejects=rejects[:3]).rejects_inserted == 3
    assert store.write(rejects=rejects[3:]).rejects_duplicate == 3


def test_an_empty_policy_deletes_nothing(store, filled):
    assert store.purge(RetentionPolicy(), now=T0 + timedelta(days=365)) == type(store.purge(RetentionPolicy()))()
    assert store.count_samples() == 30


def test_policy_values_are_validated():
    with pytest.raises(InputError, match="image_max_age_s must be > 0"):
        RetentionPolicy(image_max_age_s=0)
    with pytest.raises(InputError, match="sample_max_count"):
        RetentionPolicy(sample_max_count=-1)
    with pytest.raises(InputError, match="chunk_size"):
        RetentionPolicy(chunk_size=0)
