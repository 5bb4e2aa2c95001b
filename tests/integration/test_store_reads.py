"""The reads the stream, the scheduler and the web UI rely on, on both backends."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from monitor.errors import InputError
from monitor.store import LabelConflict, QueueQuery, StoreError, ThresholdRecord
from monitor.store.models import Threshold
from tests.integration.store_samples import T0, png_blob, scored
from monitor.store.payloads import ThresholdCounts, ThresholdParameters
from tests.store_data import approve, job_failed_alert, register_model, report_summary, summary_weights

pytestmark = pytest.mark.integration  # the store fixtures run on the real PostgreSQL too


@pytest.fixture
def model(store):
    return register_model(store, "fashion-cnn", "sha256:abc")


@pytest.fixture
def threshold(store, model):
    return store.add_threshold(ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means", value=5.0))


def ids_of(store, model, offsets):
    return [store.find_sample(scored(offset, model.id).position) for offset in offsets]


# --- refit window ------------------------------------------------------------------------------


def test_window_scores_aligns_the_current_labels(store, model):
    store.write([scored(i, model.id, scores={"ANG": float(i)}) for i in range(10)])
    sample_ids = ids_of(store, model, range(10))
    store.add_label(sample_ids[2], "OOD", "alice")
    store.add_label(sample_ids[5], "OOD", "alice")
    store.add_label(sample_ids[5], "ID", "bob", note="a plain shirt")  # the latest label wins
    store.add_label(sample_ids[9], "ID", "carol")

    window = store.window_scores(model.id, "ANG")

    assert window.values.tolist() == [float(i) for i in range(10)]
    assert window.sample_ids.tolist() == sample_ids
    assert window.labels.tolist() == [-1, -1, 1, -1, -1, 0, -1, -1, -1, 0]
    assert window.labels.dtype == np.int8 and window.values.dtype == np.float64
    assert (window.start, window.end) == (T0, T0 + timedelta(seconds=9))


def test_window_scores_takes_the_last_n_or_a_time_range_oldest_first(store, model):
    # Written out of time order: the window follows scored_at, not insertion order.
    store.write([scored(i, model.id, seconds=100 - i, scores={"MP": float(i)}) for i in range(10)])

    assert store.window_scores(model.id, "MP", last=3).values.tolist() == [2.0, 1.0, 0.0]
    since = store.window_scores(model.id, "MP", since=T0 + timedelta(seconds=95), until=T0 + timedelta(seconds=98))
    assert since.values.tolist() == [5.0, 4.0, 3.0]
    assert len(store.window_scores(model.id, "MP", since=T0 + timedelta(days=1))) == 0


def test_window_scores_leaves_out_unavailable_values_and_other_models(store, model):
    other = register_model(store, "other", "sha256:def")
    store.write([scored(i, model.id, scores={"DSS": None if i % 2 else float(i)}) for i in range(6)])
    store.write([scored(i, other.id, topic="other", scores={"DSS": 100.0}) for i in range(3)])

    assert store.window_scores(model.id, "DSS").values.tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(InputError, match="unknown indicator 'dss'"):
        store.window_scores(model.id, "dss")
    with pytest.raises(InputError, match="last must be an integer >= 1"):
        store.window_scores(model.id, "DSS", last=0)


# --- the flagged queue ---------------------------------------------------------------------------


@pytest.fixture
def queue(store, model, threshold):
    """20 samples, the even ones flagged; score = offset; class = offset % 3; images on flagged ones."""
    store.write([
        scored(i, model.id, flagged=i % 2 == 0, threshold_id=threshold.id, predicted_class=i % 3, score=float(i),
               image=png_blob() if i % 2 == 0 else None)
        for i in range(20)
    ])
    return ids_of(store, model, range(20))


def test_the_queue_holds_flagged_samples_sorted_by_score(store, model, queue):
    page = store.flagged_queue(model.id, QueueQuery(sort="score_desc", per_page=100))

    assert page.total == 10 and page.pages == 1
    assert [item.score for item in page.items] == [float(i) for i in range(18, -1, -2)]
    assert all(item.flagged and item.has_image and item.label is None for item in page.items)
    ascending = store.flagged_queue(model.id, QueueQuery(sort="time_asc", per_page=100))
    assert [item.id for item in ascending.items] == [queue[i] for i in range(0, 20, 2)]


def test_numbered_pages_cover_the_queue_once_even_with_tied_scores(store, model, threshold):
    store.write([scored(i, model.id, flagged=True, threshold_id=threshold.id, score=float(i // 3)) for i in range(25)])
    for sort in ("score_desc", "score_asc", "time_desc", "time_asc"):
        pages = [store.flagged_queue(model.id, QueueQuery(sort=sort, page=number, per_page=4)) for number in range(1, 8)]
        seen = [item.id for page in pages for item in page.items]
        assert all(page.total == 25 and page.pages == 7 for page in pages)
        assert len(seen) == 25 and len(set(seen)) == 25, sort


def test_numbered_pages(store, model, queue):
    first = store.flagged_queue(model.id, QueueQuery(sort="score_desc", per_page=4))
    third = store.flagged_queue(model.id, QueueQuery(sort="score_desc", page=3, per_page=4))

    assert [item.score for item in first.items] == [18.0, 16.0, 14.0, 12.0]
    assert [item.score for item in third.items] == [2.0, 0.0]
    assert (third.page, third.pages, third.total) == (3, 3, 10)


def test_queue_filters(store, model, queue):
    store.add_label(queue[4], "OOD", "alice")
    store.add_label(queue[6], "ID", "alice")
    store.add_label(queue[8], "OOD", "alice")
    store.undo_label(queue[8], "alice", may_undo_others=False)  # cleared: unlabelled again

    def scores(model_id=model.id, **filters):
        return sorted(item.score for item in store.flagged_queue(model_id, QueueQuery(per_page=100, **filters)).items)

    assert scores(predicted_class=0) == [0.0, 6.0, 12.0, 18.0]
    assert scores(min_score=10, max_score=14) == [10.0, 12.0, 14.0]
    assert scores(labelled="yes") == [4.0, 6.0]
    assert scores(labelled="OOD") == [4.0] and scores(labelled="ID") == [6.0]
    assert len(scores(labelled="no")) == 8 and 8.0 in scores(labelled="no")
    assert scores(since=T0 + timedelta(seconds=15), until=T0 + timedelta(seconds=18)) == [16.0]
    assert scores(model.id + 1) == []
    page = store.flagged_queue(model.id, QueueQuery(labelled="yes", per_page=100))
    assert {item.score: item.label for item in page.items} == {4.0: "OOD", 6.0: "ID"}
    assert store.flagged_queue(model.id, QueueQuery(predicted_class=0, per_page=2)).total == 4


def test_queue_rejects_bad_arguments():
    with pytest.raises(InputError, match="sort: 'loudness'"):
        QueueQuery(sort="loudness")
    with pytest.raises(InputError, match="per_page"):
        QueueQuery(per_page=0)
    with pytest.raises(InputError, match="page"):
        QueueQuery(page=0)
    with pytest.raises(InputError, match="labelled: 'maybe'"):
        QueueQuery(labelled="maybe")


# --- samples and labels ------------------------------------------------------------------------


def test_a_sample_comes_with_its_label_history(store, model, queue):
    store.add_label(queue[2], "OOD", "alice", note="a boot on a shirt model")
    store.add_label(queue[2], "ID", "bob")

    detail = store.get_sample(queue[2])

    assert [(label.label, label.labelled_by) for label in detail.labels] == [("OOD", "alice"), ("ID", "bob")]
    assert detail.labels[0].note == "a boot on a shirt model"
    assert detail.label == "ID"
    assert detail.image_content_type == "image/png" and store.get_image(queue[2]).data == png_blob().data
    assert store.get_sample(queue[1]).image_content_type is None and store.get_image(queue[1]) is None
    assert store.get_sample(10**9) is None


def test_an_undo_restores_the_label_before_and_refuses_what_it_may_not(store, queue):
    store.add_label(queue[0], "OOD", "alice")
    store.add_label(queue[0], "ID", "bob")

    with pytest.raises(LabelConflict, match="given by bob; only an admin"):
        store.undo_label(queue[0], "alice", may_undo_others=False)
    history = store.undo_label(queue[0], "alice", may_undo_others=True)

    assert [(row.label, row.labelled_by) for row in history] == [("OOD", "alice"), ("ID", "bob"), ("OOD", "alice")]
    assert history[-1].note == f"undo of label #{history[1].id} (ID by bob)"
    with pytest.raises(LabelConflict, match="no label to undo") as refused:
        store.undo_label(queue[2], "alice", may_undo_others=True)
    assert isinstance(refused.value, StoreError) and store.label_history(queue[2]) == []
    with pytest.raises(InputError, match="no sample with id 999999"):
        store.undo_label(999999, "alice", may_undo_others=True)


def test_labels_are_validated(store, queue):
    with pytest.raises(InputError, match="'maybe' is not one of ID, OOD"):
        store.add_label(queue[0], "maybe", "alice")
    with pytest.raises(InputError, match="'ood' is not one of ID, OOD"):
        store.add_label(queue[0], "ood", "alice")  # the same rule as the API and the pages: exact
    with pytest.raises(InputError, match="note: at most 2000 characters"):
        store.add_label(queue[0], "OOD", "alice", note="x" * 2001)
    with pytest.raises(InputError, match="no sample with id 999999"):
        store.add_label(999999, "OOD", "alice")
    with pytest.raises(InputError, match="labelled_by"):
        store.add_label(queue[0], "OOD", "")


def test_the_jobs_windows_see_the_current_labels(store, model, queue):
    store.add_label(queue[1], "OOD", "alice")
    store.add_label(queue[1], "ID", "bob")
    store.add_label(queue[15], "OOD", "alice")
    end = T0 + timedelta(seconds=10)

    window = store.indicator_window(model.id, ["MP", "1C-Sum"], since=T0, until=end)
    labelled = store.indicator_window(model.id, ["MP"], since=T0, until=T0 + timedelta(days=1), labelled_only=True)
    sampled = store.indicator_window(model.id, ["MP"], since=T0, until=end, max_rows=5)
    newest = store.indicator_window(model.id, ["MP"], last=3)

    assert window.sample_ids.tolist() == queue[:10]
    assert window.labels.tolist() == [-1, 0] + [-1] * 8
    assert window.values["1C-Sum"].tolist() == [scored(i, model.id).score for i in range(10)]
    assert labelled.sample_ids.tolist() == [queue[1], queue[15]] and labelled.labels.tolist() == [0, 1]
    assert len(sampled) == 5 and all(sample_id % 2 == 0 for sample_id in sampled.sample_ids.tolist())
    assert newest.sample_ids.tolist() == queue[17:] and newest.predicted.tolist() == [17 % 3, 18 % 3, 19 % 3]
    assert (newest.start, newest.end) == (T0 + timedelta(seconds=17), T0 + timedelta(seconds=19))
    assert (window.start, window.end) == (T0, T0 + timedelta(seconds=9))
    assert store.label_counts(model.id, T0, end) == {"ID": 1, "OOD": 0, "unlabelled": 9}
    with pytest.raises(InputError, match="unknown indicator 'mp'"):
        store.indicator_window(model.id, ["mp"], since=T0, until=end)


def test_the_jobs_windows_count_flags_and_find_the_top_samples(store, model, queue):
    end = T0 + timedelta(seconds=10)

    top = store.top_scored_samples(model.id, "1C-Sum", T0, end, 3)

    assert [sample.sample_id for sample in top] == [queue[9], queue[8], queue[7]]
    assert [sample.image is not None for sample in top] == [False, True, False]  # images on flagged ones
    assert [(c.model_id, c.total, c.flagged) for c in store.flagged_counts(T0, end)] == [(model.id, 10, 5)]
    assert store.flagged_counts(T0 - timedelta(days=1), T0) == []
    assert store.latest_model_id() == model.id and store.latest_model_id(until=T0) is None


# --- thresholds and weights --------------------------------------------------------------------


def test_one_threshold_is_active_per_model_and_indicator(store, model, threshold):
    newer = store.add_threshold(ThresholdRecord(
        model_id=model.id, indicator="1C-Sum", method="proportion", value=7.0, parameters=ThresholdParameters(p=0.05),
        counts=ThresholdCounts(n=5000, n_flagged=250), window_start=T0, window_end=T0 + timedelta(hours=1), fitted_by="refit"))
    other_indicator = store.add_threshold(ThresholdRecord(model_id=model.id, indicator="ANG++", method="two-means", value=0.3))
    candidate = store.add_threshold(ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means", value=6.0),
                                    activate=False)

    active = store.active_threshold(model.id, "1C-Sum")
    assert active.id == newer.id and active.parameters == ThresholdParameters(p=0.05)
    assert active.counts == ThresholdCounts(n=5000, n_flagged=250)
    assert (active.window_start, active.window_end, active.fitted_by) == (T0, T0 + timedelta(hours=1), "refit")
    assert store.active_threshold(model.id, "ANG++").id == other_indicator.id
    assert not candidate.active

    approve(store, threshold)  # an admin brings the first fit back
    history = store.threshold_history(model.id, "1C-Sum")
    assert [row.id for row in history] == [candidate.id, newer.id, threshold.id]
    assert [row.active for row in history] == [False, False, True]
    assert store.active_threshold(model.id, "MP") is None


def test_the_database_itself_refuses_a_second_active_threshold(store, model, threshold):
    row = {"model_id": model.id, "indicator": "1C-Sum", "method": "manual", "parameters": ThresholdParameters(), "counts": None,
           "value": 1.0, "active": True, "created_at": T0, "fitted_by": "sql"}
    with pytest.raises(IntegrityError):
        with store.engine.begin() as connection:
            connection.execute(insert(Threshold), [row])


def test_threshold_input_is_validated(store, model):
    with pytest.raises(InputError, match="finite"):
        ThresholdRecord(model_id=model.id, indicator="MP", method="two-means", value=float("nan"))
    with pytest.raises(InputError, match="unknown indicator"):
        ThresholdRecord(model_id=model.id, indicator="XX", method="two-means", value=1.0)
    stored = store.add_threshold(ThresholdRecord(model_id=model.id, indicator="MP", method="two-means", value=1.0))
    with pytest.raises(InputError, match="threshold #424242 is not one of model"):
        approve(store, replace(stored, id=424242))
    with pytest.raises(InputError, match="no monitored model"):
        store.add_threshold(ThresholdRecord(model_id=model.id + 99, indicator="MP", method="two-means", value=1.0))


def test_a_threshold_and_its_weights_are_one_policy(store, model):
    assert store.active_policy(model.id, "1C-Sum") is None
    record = ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means", value=2.0)
    first = store.add_threshold(record, weights=summary_weights({"MP": 1.0, "ANG": 0.5}))
    second = store.add_threshold(replace(record, value=3.0), weights=summary_weights({"MP": 0.8, "ANG": 0.9}))

    policy = store.active_policy(model.id, "1C-Sum")
    assert (policy.version, policy.threshold, policy.summary_weights_id) == (second.id, 3.0, second.summary_weights_id)
    assert dict(policy.weights) == {"MP": 0.8, "ANG": 0.9} and first.summary_weights_id != second.summary_weights_id
    with pytest.raises(TypeError):
        policy.weights["MP"] = 5.0  # immutable: the scorer and the judge share it
    assert tuple(store.policy(second.id).weights) == ("MP", "ANG")  # the members in their stored order

    # A threshold stored without weights keeps the active ones; another indicator too.
    plain = store.add_threshold(replace(record, value=4.0))
    other = store.add_threshold(replace(record, indicator="MP", value=0.5))
    assert plain.summary_weights_id == other.summary_weights_id == second.summary_weights_id

    # Approving the first threshold again brings its weights back with it, for the thresholds
    # stored later too.
    approve(store, first)
    policy = store.active_policy(model.id, "1C-Sum")
    assert (policy.version, dict(policy.weights)) == (first.id, {"MP": 1.0, "ANG": 0.5})
    later = store.add_threshold(replace(record, indicator="MP", value=0.6))
    assert later.summary_weights_id == first.summary_weights_id


# --- rates and percentiles ---------------------------------------------------------------------


def test_ood_rate_per_bucket(store, model, threshold):
    # Minute 0: 1 of 4 flagged; minute 1: nothing; minute 2: 2 of 2 flagged.
    flags = {0: False, 10: True, 20: False, 59: False, 120: True, 150: True}
    store.write([scored(i, model.id, seconds=s, flagged=f, threshold_id=threshold.id) for i, (s, f) in enumerate(flags.items())])

    buckets = store.ood_rate(model.id, since=T0, until=T0 + timedelta(minutes=4), bucket_seconds=60)

    assert [(b.start, b.total, b.flagged) for b in buckets] == [
        (T0, 4, 1), (T0 + timedelta(minutes=1), 0, 0), (T0 + timedelta(minutes=2), 2, 2), (T0 + timedelta(minutes=3), 0, 0)]
    assert buckets[0].rate == 0.25
    # Buckets align on the epoch, not on the window's start: a window from 0:30 starts at the minute.
    shifted = store.ood_rate(model.id, since=T0 + timedelta(seconds=30), until=T0 + timedelta(minutes=3), bucket_seconds=60)
    assert [(b.start, b.total) for b in shifted] == [(T0, 1), (T0 + timedelta(minutes=1), 0), (T0 + timedelta(minutes=2), 2)]
    # A window ending just past a bucket's start still shows that bucket (the overview ends at "now").
    ragged = store.ood_rate(model.id, since=T0, until=T0 + timedelta(minutes=2, microseconds=500), bucket_seconds=60)
    assert [(b.start, b.total) for b in ragged] == [(T0, 4), (T0 + timedelta(minutes=1), 0), (T0 + timedelta(minutes=2), 1)]
    counts = store.window_counts(model.id, T0, T0 + timedelta(minutes=4))
    assert (counts.scored, counts.flagged, counts.labelled) == (6, 3, 0)
    assert store.window_counts(model.id, T0, T0 + timedelta(minutes=4), buckets) == counts


# --- alerts, reports, job runs, rejects -----------------------------------------------------------


def test_alerts_wait_until_published(store):
    first = store.add_alert(job_failed_alert(run_id=1))
    second = store.add_alert(job_failed_alert(run_id=2))

    pending = store.list_alerts(unpublished_only=True, oldest_first=True)
    assert [alert.id for alert in pending] == [first.id, second.id]
    assert pending[0].kind == "job_failed" and pending[0].payload.payload.run_id == 1
    assert store.mark_alerts_published([first.id]) == 1
    assert store.mark_alerts_published([first.id]) == 0  # already published: left as it was
    assert [alert.id for alert in store.list_alerts(unpublished_only=True)] == [second.id]
    assert [alert.id for alert in store.list_alerts()] == [second.id, first.id]
    assert [alert.id for alert in store.list_alerts(limit=1, offset=1)] == [first.id]
    assert store.list_alerts(kind="job_failed")[-1].published_at is not None


def test_job_runs_record_start_and_outcome(store):
    run = store.start_job_run("refit", runner="monitor-7:4242")
    assert run.outcome == "running" and run.finished_at is None and run.runner == "monitor-7:4242"
    assert store.start_job_run("retention").runner is None  # who ran it is optional

    done = store.finish_job_run(run.id, "failed", error="too few samples: 12 < 500")

    assert done.outcome == "failed" and done.error == "too few samples: 12 < 500"
    assert done.finished_at >= done.started_at
    assert done.runner == "monitor-7:4242"
    assert [(r.id, r.runner) for r in store.list_job_runs(job="refit")] == [(run.id, "monitor-7:4242")]
    with pytest.raises(InputError, match="outcome"):
        store.finish_job_run(run.id, "great")


def test_runs_left_running_are_closed_as_interrupted(store):
    died = store.start_job_run("refit", started_at=T0)
    finished = store.finish_job_run(store.start_job_run("refit", started_at=T0).id, "ok")
    other = store.start_job_run("retention", started_at=T0)

    closed = store.close_interrupted_runs("refit", "interrupted", T0 + timedelta(minutes=5))

    assert [(run.id, run.outcome, run.error) for run in closed] == [(died.id, "failed", "interrupted")]
    assert store.close_interrupted_runs("refit", "interrupted", T0) == []
    outcomes = {run.id: run.outcome for run in store.list_job_runs()}
    assert outcomes == {died.id: "failed", finished.id: "ok", other.id: "running"}
    assert store.run_started_since("refit", T0) and not store.run_started_since("refit", T0 + timedelta(seconds=1))


def test_reports_are_listed_newest_first(store):
    first = store.add_report(T0, T0 + timedelta(days=1), report_summary(samples=10), "var/reports/1.html")
    second = store.add_report(T0 + timedelta(days=1), T0 + timedelta(days=2), report_summary(drifted=("MP",)), None)

    assert [report.id for report in store.list_reports()] == [second.id, first.id]
    assert [report.id for report in store.list_reports(limit=1, offset=1)] == [first.id]
    assert store.get_report(first.id).summary == report_summary(samples=10)
    assert store.get_report(second.id).summary.drifted == ("MP",)
    with pytest.raises(InputError, match="before period_start"):
        store.add_report(T0, T0 - timedelta(days=1), report_summary())


def test_concurrent_refits_leave_exactly_one_active_threshold(store, model):
    from concurrent.futures import ThreadPoolExecutor

    records = [ThresholdRecord(model_id=model.id, indicator="MP", method="two-means", value=float(i)) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(store.add_threshold, records))

    history = store.threshold_history(model.id, "MP")
    assert len(history) == 8 and sum(row.active for row in history) == 1
    assert store.active_threshold(model.id, "MP").id == max(row.id for row in history)


def test_a_cleared_label_leaves_the_sample_unlabelled_everywhere(store, model, queue):
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from monitor.store.models import Label

    store.add_label(queue[4], "OOD", "alice")
    store.add_label(queue[6], "ID", "alice")
    history = store.undo_label(queue[4], "alice", may_undo_others=False)  # an undone first label
    assert [row.label for row in history] == ["OOD", None] and store.get_sample(queue[4]).label is None

    labelled = store.flagged_queue(model.id, QueueQuery(labelled="yes", per_page=100)).items
    assert [item.score for item in labelled] == [6.0]
    assert 4.0 in [item.score for item in store.flagged_queue(model.id, QueueQuery(labelled="no", per_page=100)).items]
    assert store.window_counts(model.id, T0, T0 + timedelta(days=1)).labelled == 1
    assert store.label_counts(model.id, T0, T0 + timedelta(days=1)) == {"ID": 1, "OOD": 0, "unlabelled": 19}
    window = store.window_scores(model.id, "1C-Sum")
    codes = dict(zip(window.sample_ids.tolist(), window.labels.tolist()))
    assert codes[queue[4]] == -1 and codes[queue[6]] == 0
    with pytest.raises(IntegrityError), store.engine.begin() as connection:
        connection.execute(insert(Label).values(sample_id=queue[4], label="XX", labelled_by="alice",
                                                labelled_at=T0, note=None))


def test_grouped_reads_share_one_connection(store, model, queue):
    before = store.engine.pool.checkedout()
    with store.reads():
        models = store.list_models()
        with store.reads():  # nested groups join the outer one
            page = store.flagged_queue(model.id, QueueQuery(per_page=5))
            assert store.engine.pool.checkedout() == before + 1
        detail = store.get_sample(page.items[0].id)
        assert store.engine.pool.checkedout() == before + 1
    assert store.engine.pool.checkedout() == before
    assert [m.id for m in models] == [model.id] and detail.id == page.items[0].id and page.total == 10
