"""The typed JSON documents of the store: what writers produce reads back equal, and a document
of another shape is refused with an error that names the key (never guessed at)."""

from __future__ import annotations

import pytest

from monitor.store.payloads import (
    ALERT_PAYLOADS,
    AlertDocument,
    DriftAlert,
    DriftTest,
    NoiseCalibration,
    PayloadError,
    ThresholdCounts,
    ThresholdParameters,
    Window,
)
from monitor.thresholds import fit_threshold
from tests.store_data import job_failed_alert, report_summary, summary_weights


def test_a_fits_counts_are_read_back_with_the_labels_it_used():
    labels = [1] * 12 + [0] * 40 + [-1] * 48
    values = [10.0 + i % 3 for i in range(12)] + [float(i % 5) for i in range(88)]
    fit = fit_threshold(values, "two-means", labels, min_samples=10)

    counts = ThresholdCounts.from_json(fit.counts())

    assert counts.to_json() == fit.counts()
    assert (counts.n_labelled_ood, counts.n_labelled_id, counts.n_unlabelled) == (12, 40, 48)
    assert counts.labels_used() == "12 OOD, 40 ID"
    assert ThresholdCounts(n=100).labels_used() == "none"


@pytest.mark.parametrize("document", [
    ThresholdParameters(p=0.05, min_samples=200, window=Window(last_samples=10_000), used_labels=True,
                        details={"unsupervised_threshold": 2.5}, summary_weights_id=3),
    report_summary(samples=40, drifted=("MP", "ANG++")),
    summary_weights({"MP": 0.5, "ANG": 1.5}),
])
def test_documents_round_trip_through_their_json(document):
    assert type(document).from_json(document.to_json()) == document


def test_every_alert_kind_round_trips_and_keeps_its_kind():
    stored = job_failed_alert(run_id=7)
    again = AlertDocument.from_json(stored.to_json())
    assert again == stored and again.kind == "job_failed" and again.published(41)["alert_id"] == 41
    drift = AlertDocument(DriftAlert(
        report_id=1, model_id=1, period=Window(start="a", end="b"), reference=Window(start="c", end="d"),
        drifted=(DriftTest(indicator="MP", statistic=0.4, p_value=1e-9, adjusted_p_value=1e-8),), test="ks",
        correction="holm", alpha=0.01, min_effect=0.1, file_path=None), "2026-06-01T12:00:00.000Z")
    assert AlertDocument.from_json(drift.to_json()) == drift
    assert "drifted" not in drift.to_json()["drifted"][0], "only drifted ones are listed: no flag"
    assert set(ALERT_PAYLOADS) == {"threshold_changed", "ood_rate", "drift", "job_failed", "threshold_proposed",
                                   "threshold_activated"}


@pytest.mark.parametrize("cls, document, message", [
    (ThresholdCounts, {"n": 10, "labelled_ood": 3}, "threshold counts: unknown key(s) 'labelled_ood'"),
    (ThresholdCounts, {"n_flagged": 3}, "threshold counts: key(s) 'n' missing"),
    (ThresholdCounts, [1, 2], "threshold counts: expected a JSON object, got list"),
    (ThresholdParameters, {"p": 0.1, "window": {"days": 2}}, "window: unknown key(s) 'days'"),
    (NoiseCalibration, {"fingerprint": "f", "n": 2, "seed": 0, "means": {}}, "'stds' missing"),
])
def test_a_document_of_another_shape_is_refused_naming_the_key(cls, document, message):
    with pytest.raises(PayloadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls.from_json(document)


def test_an_alert_of_an_unknown_kind_or_version_is_refused():
    document = job_failed_alert().to_json()
    with pytest.raises(PayloadError, match="kind 'flagged' is not one of"):
        AlertDocument.from_json({**document, "kind": "flagged"})
    with pytest.raises(PayloadError, match="schema_version 2 is not 1"):
        AlertDocument.from_json({**document, "schema_version": 2})
    with pytest.raises(PayloadError, match="job_failed alert: unknown key\\(s\\) 'rate'"):
        AlertDocument.from_json({**document, "rate": 0.3})


def test_summary_weights_must_be_numbers():
    with pytest.raises(PayloadError, match="'weights' must map indicator names to numbers"):
        type(summary_weights({"MP": 1.0})).from_json({"weights": {"MP": "high"}, "members": ["MP"]})


def test_the_store_refuses_to_read_a_row_it_does_not_understand(tmp_path):
    from sqlalchemy import text

    from monitor.store import Store, connect, upgrade
    from tests.store_data import register_model

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    upgrade(connect(url))
    with Store.open(url) as store:
        register_model(store, "classifier", "weights-1")
        with store.engine.begin() as connection:  # a row no writer of this version produces
            connection.execute(text("UPDATE monitored_models SET preprocessing = '{\"size\": [28, 28]}'"))
        with pytest.raises(PayloadError, match="model preprocessing: unknown key\\(s\\) 'size'"):
            store.list_models()
