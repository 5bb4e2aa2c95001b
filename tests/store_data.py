"""What the production writers hand the store, for tests that need a model, a calibration or an
alert without running the daemon or a job: built with the writers' own classes, never as
hand-written dictionaries."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from importlib import resources

from monitor.classifiers import Preprocessing
from monitor.clock import iso_utc, utc_now
from monitor.store.payloads import AlertDocument, DriftTest, JobFailedAlert, ReportSummary, SummaryWeightsDocument, Window

# The bundled demo model's own description: what the daemon registers for it, class names included.
FASHION_PREPROCESSING = Preprocessing.from_dict(json.loads(
    resources.files("monitor.assets").joinpath("demo_fashion_resnet.json").read_text())["preprocessing"])


def register_model(store, name: str = "classifier", fingerprint: str = "weights-1",
                   preprocessing: Preprocessing = FASHION_PREPROCESSING):
    """A model row as the daemon registers it (monitor.stream.daemon)."""
    return store.register_model(name, fingerprint, preprocessing.to_dict())


def job_failed_alert(job: str = "drift_report", run_id: int = 1, error: str = "disk full",
                     at: datetime | None = None) -> AlertDocument:
    """A job_failed alert as the scheduler raises it (monitor.jobs.scheduler)."""
    moment = iso_utc(at or utc_now())
    return AlertDocument(JobFailedAlert(job=job, run_id=run_id, error=error, started_at=moment, failed_at=moment,
                                        runner="host:1"), moment)


@lru_cache(maxsize=1)
def noise_calibration() -> dict:
    """The 1C-Sum noise statistics a real Scorer computes for a small batch-norm CNN at 28x28
    (as the daemon stores them): members with their own means and stds, none of them 0 and 1."""
    from monitor.indicators import Scorer
    from tests.unit.indicator_models import small_cnn

    scorer = Scorer(small_cnn(), mean=FASHION_PREPROCESSING.mean, std=FASHION_PREPROCESSING.std,
                    input_shape=FASHION_PREPROCESSING.input_shape)
    return scorer.calibrate(n=256, progress=False).to_dict()


def report_summary(model_id: int = 1, samples: int = 0, drifted: tuple[str, ...] = ()) -> ReportSummary:
    """A drift report's summary as the report job writes it (monitor.jobs.drift_report)."""
    return ReportSummary(
        model_id=model_id, indicator="1C-Sum", samples=samples, flagged=0,
        reference=Window(start="2026-06-01T00:00:00.000Z", end="2026-06-02T00:00:00.000Z", samples=samples),
        labels={"ID": 0, "OOD": 0, "unlabelled": samples}, drifted=drifted,
        tests=tuple(DriftTest(indicator=name, statistic=0.5, p_value=1e-9, adjusted_p_value=1e-8, drifted=True)
                    for name in drifted),
        correction="holm", alpha=0.01, min_effect=0.1,
    )


def summary_weights(weights: dict[str, float]) -> SummaryWeightsDocument:
    """1C-Sum weights as the refit job stores them (monitor.thresholds.SummaryWeights.to_dict and
    the members they weigh)."""
    from monitor.thresholds import SummaryWeights

    fitted = SummaryWeights(weights=weights, offset=0.0, used_labels=True, reason="fitted on labels",
                            n_labelled_ood=10, n_labelled_id=10)
    return SummaryWeightsDocument.from_json({**fitted.to_dict(), "members": list(weights)})


def approve(store, threshold, by: str = "admin"):
    """Make a stored threshold (and the weights stored with it) active the way the service does:
    proposed with its shadow evaluation (monitor.jobs.proposals.propose) and approved by an admin
    (monitor.proposals.decide). Returns the decided proposal."""
    from datetime import timedelta

    from monitor.proposals import Window, decide, document, evaluate
    from monitor.store.proposals import ProposalRecord
    from monitor.thresholds import ClassThresholds

    now = utc_now()
    evaluation = evaluate(store, threshold.model_id, threshold.indicator, ClassThresholds(threshold.value),
                          Window(last=1000))
    proposal = store.add_proposal(ProposalRecord(
        model_id=threshold.model_id, indicator=threshold.indicator, threshold_id=threshold.id,
        summary_weights_id=threshold.summary_weights_id, evaluation=document(evaluation),
        expires_at=now + timedelta(hours=1), proposed_by="refit"), now=now)
    return decide(store, proposal.id, "approve", by=by, note=None, now=now)
