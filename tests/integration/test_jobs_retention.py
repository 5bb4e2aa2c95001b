"""Retention on schedule: the [retention] policy applied by the store, recorded as a job run."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from monitor.jobs import scheduler
from tests.integration.jobs_data import NOW, context_for, write_scores
from tests.store_data import register_model

pytestmark = pytest.mark.integration


def test_retention_job_deletes_what_the_policy_no_longer_keeps(store):
    model = register_model(store, "classifier", "weights-1")
    write_scores(store, model.id, np.zeros(30), end=NOW - timedelta(days=10), span=timedelta(hours=1))
    write_scores(store, model.id, np.zeros(20), end=NOW - timedelta(days=3), span=timedelta(hours=1),
                 first_offset=100, images=True)
    write_scores(store, model.id, np.ones(10), end=NOW, span=timedelta(hours=1), first_offset=200, images=True)
    context = context_for(store, sections={"retention": {"score_days": 7, "image_days": 2}})

    run = scheduler.run_job(context, "retention")

    assert run.outcome == "ok"
    assert "deleted 30 samples, 20 images" in run.detail
    assert store.count_samples(model.id) == 30
    recent = store.window_scores(model.id, "1C-Sum", since=NOW - timedelta(days=4))
    details = [store.get_sample(int(sample_id)) for sample_id in recent.sample_ids]
    assert sum(detail.image_content_type is not None for detail in details) == 10, "only the images younger than 2 days stay"
    [row] = store.list_job_runs(job="retention")
    assert row.outcome == "ok" and row.error is None



def test_retention_keeps_at_most_the_configured_counts_of_samples_and_images(store):
    model = register_model(store, "classifier", "weights-1")
    ids = write_scores(store, model.id, np.zeros(40), end=NOW, span=timedelta(hours=1), images=True)
    context = context_for(store, sections={"retention": {"max_samples": 25, "max_images": 10}})

    run = scheduler.run_job(context, "retention")

    assert run.outcome == "ok" and "deleted 15 samples" in run.detail
    kept = [store.get_sample(sample_id) for sample_id in ids[15:]]
    assert store.count_samples(model.id) == 25 and all(detail is not None for detail in kept)
    assert [detail.id for detail in kept if detail.image_content_type is not None] == ids[-10:], "the newest images stay"
