"""Alerts of the scheduled jobs: OOD-rate episodes, failures that are retried, and every alert
kind arriving on a real broker topic as JSON with the documented schema."""

from __future__ import annotations

import re

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from monitor.jobs import scheduler
from monitor.jobs.alerts import ALERT_KINDS, COMMON_FIELDS, PAYLOAD_FIELDS, AlertSink
from monitor.jobs.rate_alert import check_rates
from tests.integration.jobs_data import (
    NOW,
    RecordingPublisher,
    add_threshold,
    context_for,
    job_settings,
    mixture,
    write_scores,
)
from tests.services import wait_until
from tests.store_data import register_model

pytestmark = pytest.mark.integration

RATE = {"expected_share": 0.05, "rate_window_s": 600, "rate_min_samples": 50, "rate_alpha": 0.001}


def _flags(count: int, share: float, seed: int) -> np.ndarray:
    flags = np.zeros(count, dtype=bool)
    flags[: int(round(count * share))] = True
    return np.random.default_rng(seed).permutation(flags)


def test_rate_alert_opens_once_per_episode_and_closes(store):
    model = register_model(store, "classifier", "weights-1")
    threshold = add_threshold(store, model.id, 3.0)
    publisher = RecordingPublisher()
    window = timedelta(minutes=10)
    write_scores(store, model.id, np.zeros(200), end=NOW, span=window, flagged=_flags(200, 0.05, 1),
                 threshold_id=threshold)

    [calm] = check_rates(context_for(store, publisher, **RATE))
    assert calm.total == 200 and calm.flagged == 10 and not calm.significant and calm.transition is None
    assert publisher.published == []

    # 90 of 400 flagged (22.5 %) against an expected 5 %: significant.
    write_scores(store, model.id, np.zeros(200), end=NOW, span=window, first_offset=1000,
                 flagged=_flags(200, 0.40, 2), threshold_id=threshold)
    [opened] = check_rates(context_for(store, publisher, **RATE))
    [again] = check_rates(context_for(store, publisher, **RATE))
    assert opened.transition == "open" and opened.p_value < 1e-6
    assert again.significant and again.transition is None, "one alert per episode, not per check"
    assert publisher.kinds() == ["ood_rate"]
    payload = publisher.published[0][1]
    assert payload["state"] == "open" and payload["samples"] == 400 and payload["flagged"] == 90
    assert payload["expected_share"] == 0.05 and payload["observed_share"] == pytest.approx(0.225)

    later = NOW + timedelta(minutes=20)
    write_scores(store, model.id, np.zeros(200), end=later, span=window, first_offset=2000,
                 flagged=_flags(200, 0.04, 3), threshold_id=threshold)
    [closed] = check_rates(context_for(store, publisher, now=later, **RATE))
    assert closed.transition == "closed" and closed.total == 200
    assert publisher.kinds() == ["ood_rate", "ood_rate"]
    assert publisher.published[1][1]["state"] == "closed"
    assert publisher.published[1][1]["episode_started_at"] == payload["episode_started_at"]
    states = [alert.payload.payload.state for alert in store.list_alerts(kind="ood_rate", oldest_first=True)]
    assert states == ["open", "closed"], "episode state is stored"


def test_alerts_the_broker_missed_are_stored_and_redelivered_by_the_rate_job(store):
    from monitor.jobs.refit import refit

    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(900, 100)
    write_scores(store, model.id, values)
    publisher = RecordingPublisher()
    publisher.unreachable = True
    assert refit(context_for(store, publisher)).fitted, "a dead broker does not fail the job"
    [stored] = store.list_alerts(kind="threshold_changed")
    assert stored.published_at is None

    publisher.unreachable = False
    a_minute_later = datetime.now(timezone.utc) + timedelta(seconds=61)
    run = scheduler.run_job(context_for(store, publisher, now=a_minute_later), "rate_alert")

    assert run.outcome == "ok" and "redelivered 1 stored alert" in run.detail
    [(kind, payload)] = publisher.published
    assert kind == "threshold_changed" and payload["alert_id"] == stored.id
    assert store.list_alerts(kind="threshold_changed")[0].published_at is not None
    assert scheduler.run_job(context_for(store, publisher, now=a_minute_later), "rate_alert").outcome == "ok"
    assert len(publisher.published) == 1, "published once"


def test_a_failing_job_is_recorded_alerted_and_retried_while_the_scheduler_runs(tmp_path):
    from monitor.jobs.scheduler import start_scheduler
    from monitor.store import Store, connect, upgrade

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    upgrade(connect(url))
    store = Store.open(url)
    model = register_model(store, "classifier", "weights-1")
    values, _ = mixture(90, 10)
    write_scores(store, model.id, values, end=datetime.now(timezone.utc) - timedelta(seconds=5),
                 span=timedelta(minutes=5))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the report directory should be")
    settings = job_settings(url, refit_every_s=0, rate_every_s=0, retention_every_s=0,
                            report_every_hours=2 / 3600, report_dir=str(blocked), report_top_samples=4)
    publisher = RecordingPublisher()
    handle = start_scheduler(settings, store, publisher)
    try:
        failed = wait_until(lambda: [run for run in store.list_job_runs(job="drift_report") if run.outcome == "failed"],
                            30, "a failed drift_report run")
        assert "report_dir" in failed[0].error and "not-a-directory" in failed[0].error
        wait_until(lambda: "job_failed" in publisher.kinds(), 10, "the job_failed alert")
        alert = next(payload for kind, payload in publisher.published if kind == "job_failed")
        assert alert["job"] == "drift_report" and alert["run_id"] == failed[0].id
        assert handle.running, "a failed job does not stop the scheduler"

        settings.jobs.report_dir = str(tmp_path / "reports")  # the operator fixes the path
        ok = wait_until(lambda: [run for run in store.list_job_runs(job="drift_report") if run.outcome == "ok"],
                        30, "the next drift_report run to succeed")
        assert ok[0].id > failed[0].id
        assert any((tmp_path / "reports").glob("drift-*.html"))
    finally:
        handle.shutdown()
        store.close()
    assert not handle.running


def test_every_alert_kind_arrives_on_the_broker_as_documented_json(tmp_path):
    from kafka import KafkaConsumer

    from monitor.outbound.alerts import alerts_publisher
    from monitor.jobs.drift_report import make_report
    from monitor.jobs.proposals import decide
    from monitor.jobs.rate_alert import check_rates as rates
    from monitor.jobs.refit import refit
    from monitor.store import Store, connect, upgrade
    from tests.services import TansuBroker, create_tansu_topic

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    upgrade(connect(url))
    store = Store.open(url)
    broker = TansuBroker().start()
    try:
        create_tansu_topic(broker, "ood-monitor.alerts", partitions=1)
        model = register_model(store, "classifier", "weights-1")
        threshold = add_threshold(store, model.id, 3.0)
        reference, _ = mixture(300, 0, seed=4)
        write_scores(store, model.id, reference, end=NOW - timedelta(hours=1), span=timedelta(hours=1))
        shifted, _ = mixture(200, 100, seed=5)
        write_scores(store, model.id, shifted + 1.5, end=NOW, span=timedelta(minutes=10), first_offset=5000,
                     flagged=shifted + 1.5 > 3.0, threshold_id=threshold)
        context = context_for(store, None, **RATE, reference_hours=1.0, report_dir=str(tmp_path / "reports"))
        context.settings.kafka.bootstrap_servers = [broker.bootstrap]
        publisher = alerts_publisher(context.settings)
        context.alerts = AlertSink(store, publisher)

        assert refit(context).fitted
        # A proposed re-fit (another method, another value), then its approval in the web app:
        # stored there, published by the scheduler's redelivery.
        context.settings.thresholds.activation = "propose"
        context.settings.jobs.refit_method = "proportion"
        proposal = refit(context).proposal
        approved_at = NOW + timedelta(minutes=1)
        decide(store, proposal.id, "approve", by="admin", note=None, now=approved_at)
        assert context.alerts.redeliver(approved_at + timedelta(minutes=2)) == 1
        assert rates(context)[0].transition == "open"
        assert make_report(context, NOW - timedelta(minutes=10), NOW).drifted
        context.settings.jobs.report_dir = str(tmp_path / "reports" / "drift-file")
        Path(context.settings.jobs.report_dir).write_text("blocks the directory")
        assert scheduler.run_job(context, "drift_report").outcome == "failed"
        publisher.close()

        consumer = KafkaConsumer("ood-monitor.alerts", bootstrap_servers=broker.bootstrap,
                                 auto_offset_reset="earliest", group_id="alerts-check",
                                 session_timeout_ms=6000, consumer_timeout_ms=1000)
        documents: list[dict] = []

        def received_all() -> bool:
            documents.extend(json.loads(message.value) for message in consumer)
            return {document["kind"] for document in documents} >= set(ALERT_KINDS)

        try:
            wait_until(received_all, 60, "one alert of each kind on the topic")
        finally:
            consumer.close()
    finally:
        broker.stop()
        store.close()

    for document in documents:
        missing = set(COMMON_FIELDS + PAYLOAD_FIELDS[document["kind"]]) - set(document)
        assert not missing, f"{document['kind']} alert lacks {missing}"
        assert document["schema_version"] == 1 and isinstance(document["alert_id"], int)
        datetime.fromisoformat(document["created_at"].replace("Z", "+00:00"))
        # One format for every moment on the alerts topic (the daemon's flagged alerts use it too).
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["created_at"]), document["created_at"]
    by_kind = {document["kind"]: document for document in documents}
    assert by_kind["ood_rate"]["state"] == "open"
    assert by_kind["drift"]["drifted"] and by_kind["drift"]["correction"] == "holm"
    assert by_kind["job_failed"]["job"] == "drift_report" and "report_dir" in by_kind["job_failed"]["error"]
    assert by_kind["threshold_changed"]["method"] == "two-means"
    assert by_kind["threshold_proposed"]["method"] == "proportion"
    assert by_kind["threshold_activated"]["proposal_id"] == by_kind["threshold_proposed"]["proposal_id"]
