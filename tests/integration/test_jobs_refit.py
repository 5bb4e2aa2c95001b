"""Threshold re-fit on a real database (SQLite and PostgreSQL): methods, labels, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.jobs import scheduler
from monitor.jobs.refit import refit
from monitor.names import INDICATORS, SUMMARY_MEMBERS_EXCLUDED
from tests.integration.jobs_data import (
    RecordingPublisher,
    add_threshold,
    context_for,
    mixture,
    write_scores,
)
from monitor.store.payloads import Window
from tests.store_data import noise_calibration, register_model

pytestmark = pytest.mark.integration


def _stored_values(store, model_id):
    return store.window_scores(model_id, "1C-Sum").values


def store_members(store, model_id, names):
    """Each named indicator's stored values, in the same (oldest first) order as _stored_values."""
    return {name: store.window_scores(model_id, name).values for name in names}


@pytest.mark.parametrize("method, parameters", [("proportion", {"expected_share": 0.1}), ("two-means", {})])
def test_refit_of_a_mixture_separates_id_from_ood(store, method, parameters):
    model = register_model(store, "classifier", "weights-1")
    values, truth = mixture(900, 100)
    write_scores(store, model.id, values)
    publisher = RecordingPublisher()
    context = context_for(store, publisher, refit_method=method, refit_window_samples=5000, **parameters)

    result = refit(context)

    assert result.fitted, result.message
    stored = _stored_values(store, model.id)
    ood_side = stored > result.threshold.value
    # 900 N(0,1) and 100 N(8,1) values: both methods must put exactly the OOD-like ones above.
    assert ood_side.sum() == 100
    assert stored[ood_side].min() > result.threshold.value > stored[~ood_side].max()
    active = store.active_threshold(model.id, "1C-Sum")
    assert active.id == result.threshold.id and active.method == method
    assert active.counts.n == 1000 and active.counts.n_flagged == 100
    assert active.parameters.window == Window(last_samples=5000)
    if method == "proportion":
        assert active.parameters.p == 0.1
    assert active.window_start is not None and active.window_end > active.window_start
    [(kind, payload)] = publisher.published
    assert kind == "threshold_changed"
    assert payload["threshold_id"] == active.id and payload["value"] == active.value
    assert payload["method"] == method and payload["previous_threshold_id"] is None
    assert payload["counts"]["n"] == 1000
    stored_alert = store.list_alerts(kind="threshold_changed")[0]
    assert stored_alert.published_at is not None and stored_alert.payload.payload.threshold_id == active.id


def test_labels_move_the_threshold_as_the_label_rule_says(store):
    model = register_model(store, "classifier", "weights-1")
    rng = np.random.default_rng(3)
    # ID N(0,1), a near-OOD cluster around 4 and far OOD around 10: without labels two-means cuts
    # between near and far; operators who label near samples OOD pull the cut below them.
    values = np.concatenate([rng.normal(0, 0.7, 700), rng.normal(4, 0.3, 150), rng.normal(10, 0.5, 150)])
    ids = write_scores(store, model.id, rng.permutation(values))
    context = context_for(store, refit_method="two-means", min_labels_for_weights=10)
    before = refit(context)
    stored = _stored_values(store, model.id)
    near = np.flatnonzero((stored > 2.5) & (stored < 6))
    assert before.threshold.value > stored[near].max(), "unsupervised two-means leaves the near cluster as ID"

    labelled_ood = near[:12]
    labelled_id = np.flatnonzero(stored < 1)[:15]
    for index in labelled_ood:
        store.add_label(ids[index], "OOD", labelled_by="operator")
    for index in labelled_id:
        store.add_label(ids[index], "ID", labelled_by="operator")
    calibration = noise_calibration()
    store.save_calibration("weights-1", calibration)
    after = refit(context)

    # The threshold is fitted on the 1C-Sum the daemon computes from now on: the stored member
    # values standardised with the model's noise statistics and re-weighted with the new weights.
    # The daemon scores with the active policy: the new threshold and the weights stored with it.
    policy = store.active_policy(model.id, "1C-Sum")
    assert policy.weights is not None and after.summary_weights_id == policy.summary_weights_id
    assert after.threshold.summary_weights_id == policy.summary_weights_id  # one policy: the threshold names its weights
    assert policy.version == after.threshold.id
    members = store_members(store, model.id, policy.weights)
    means, stds = calibration["means"], calibration["stds"]
    reweighted = sum(weight * (members[name] - means[name]) / stds[name]
                     for name, weight in policy.weights.items())
    assert after.threshold.value < reweighted[labelled_ood].min(), "every labelled OOD sample is flagged"
    assert after.threshold.value > reweighted[labelled_id].max(), "no labelled ID sample is flagged"
    assert after.threshold.counts.n_labelled_ood == 12 and after.threshold.counts.n_labelled_id == 15
    assert after.threshold.counts.mistakes == 0
    assert after.threshold.parameters.used_labels is True
    assert after.previous.id == before.threshold.id
    assert store.active_threshold(model.id, "1C-Sum").id == after.threshold.id
    # With 12 OOD and 15 ID labels (>= 10 of each) the 1C-Sum weights are re-fitted and stored.
    expected_members = {name for name in INDICATORS if name in means and name not in SUMMARY_MEMBERS_EXCLUDED}
    assert set(policy.weights) == expected_members
    assert after.weights_message.startswith(f"1C-Sum weights #{policy.summary_weights_id} fitted on 12 OOD and 15 ID labels")


def test_too_few_samples_keep_the_old_threshold_and_say_why(store):
    model = register_model(store, "classifier", "weights-1")
    kept = add_threshold(store, model.id, 2.5)
    values, _ = mixture(40, 5)
    write_scores(store, model.id, values)
    publisher = RecordingPublisher()
    context = context_for(store, publisher, min_samples=100, refit_window_samples=1000)

    run = scheduler.run_job(context, "refit")

    assert run.outcome == "skipped"
    assert "not enough data" in run.detail and "45 values" in run.detail and "100" in run.detail
    assert f"kept threshold #{kept}" in run.detail
    assert store.active_threshold(model.id, "1C-Sum").id == kept
    assert len(store.threshold_history(model.id)) == 1
    [row] = store.list_job_runs(job="refit")
    assert row.outcome == "skipped" and row.error == run.detail and row.finished_at is not None
    assert publisher.published == []


def test_refit_on_the_last_hours_window_uses_only_those_samples(store):
    from datetime import timedelta

    from tests.integration.jobs_data import NOW

    model = register_model(store, "classifier", "weights-1")
    old, _ = mixture(500, 0, seed=1)
    write_scores(store, model.id, old + 50, end=NOW - timedelta(hours=5), first_offset=0)
    recent, _ = mixture(450, 50, seed=2)
    write_scores(store, model.id, recent, end=NOW, first_offset=10_000)
    context = context_for(store, refit_window_hours=2.0, refit_method="two-means")

    result = refit(context)

    assert result.threshold.counts.n == 500
    assert result.threshold.parameters.window == Window(hours=2.0)
    assert result.threshold.window_start >= NOW - timedelta(hours=2)


def test_extreme_value_refit_flags_about_the_target_rate_of_an_id_stream(store):
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(4000, 0, seed=9)
    write_scores(store, model.id, values)
    context = context_for(store, refit_method="extreme-value", extreme_value_q=0.005)

    result = refit(context)

    stored = _stored_values(store, model.id)
    share = float((stored > result.threshold.value).mean())
    assert 0.001 <= share <= 0.015, f"{share:.4f} flagged for a target of 0.005"
    assert result.threshold.method == "extreme-value"
    assert result.threshold.parameters.q == 0.005 and result.threshold.parameters.initial_quantile is not None
    assert result.threshold.parameters.details["n_peaks"] >= 10
