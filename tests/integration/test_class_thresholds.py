"""Thresholds per predicted class on a real database (SQLite and PostgreSQL): the re-fit fits and
stores them with the policy, a proposal carries them, and the stream judges each sample by its
predicted class's threshold of the policy its batch was scored with."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import numpy as np
import pytest
import torch
from PIL import Image

from monitor import Scorer, proposals
from monitor.classifiers import Preprocessing
from monitor.imaging import ImageLimits, decode_image, stack_images
from monitor.jobs.refit import refit
from monitor.store import ThresholdRecord
from monitor.store.payloads import ClassThresholdsDocument
from monitor.stream.local import LocalBroker, LocalConsumer, LocalProducer
from monitor.stream.pipeline import PipelineParts, PolicySource, ScorerAdapter, build_pipeline, image_decoder
from monitor.stream.steps import Shutdown
from tests.integration.jobs_data import NOW, RecordingPublisher, add_threshold, context_for, write_scores
from tests.store_data import register_model
from tests.unit.stream_parts import INPUT_SHAPE, tiny_classifier

pytestmark = pytest.mark.integration

INDICATOR = "1C-Sum"
PER_CLASS = {"thresholds": {"per_class": True, "min_class_samples": 50}}


def _classes_window(rng):
    """Class 0: ID around 0, OOD around 10; class 1, the model's less sure class: ID around 3, a
    near cluster around 6.5, OOD around 12; class 2: 20 samples, too few for an own threshold."""
    parts = [
        (0, rng.normal(0, 0.7, 300)), (0, rng.normal(10, 0.5, 30)),
        (1, rng.normal(3, 0.7, 300)), (1, rng.normal(6.5, 0.3, 40)), (1, rng.normal(12, 0.5, 30)),
        (2, rng.normal(1, 0.7, 20)),
    ]
    values = np.concatenate([part for _, part in parts])
    predicted = np.concatenate([np.full(part.size, cls) for cls, part in parts])
    order = rng.permutation(values.size)
    return values[order], predicted[order]


def _policy(store, model_id):
    return PolicySource(store, model_id, INDICATOR, refresh_s=0.0).refresh()


def test_a_per_class_refit_gives_classes_with_enough_samples_their_own_threshold_steered_by_their_labels(store):
    model = register_model(store, "classifier", "weights-1")
    values, predicted = _classes_window(np.random.default_rng(5))
    write_scores(store, model.id, values, predicted=predicted)
    publisher = RecordingPublisher()
    context = context_for(store, publisher, sections=PER_CLASS, refit_method="two-means",
                          min_labels_for_weights=1000)

    first = refit(context)

    assert first.fitted, first.message
    stored = first.threshold.class_thresholds
    assert set(stored.per_class()) == {0, 1} and set(stored.fallbacks) == {"2"}
    assert stored.min_class_samples == 50 and stored.class_counts == {"0": 330, "1": 370, "2": 20}
    policy = _policy(store, model.id)  # what the daemon reads: the same row, one version
    assert policy.version == first.threshold.id and dict(policy.per_class) == stored.per_class()
    own = stored.per_class()
    window = store.window_scores(model.id, INDICATOR)
    by_class = {cls: window.values[window.predicted == cls] for cls in (0, 1)}
    # Class 0's own cut lies between its ID and OOD groups; class 1's above its ID group.
    assert by_class[0][by_class[0] < 5].max() < own[0] < by_class[0][by_class[0] > 5].min()
    assert own[1] > by_class[1][by_class[1] < 5].max()
    near = (window.predicted == 1) & (window.values > 5) & (window.values < 8)
    assert own[1] > window.values[near].max(), "unsupervised, class 1's near cluster stays ID"
    judged = policy.judgement(2)
    assert (judged.scope, judged.value, judged.version) == ("global", first.threshold.value, policy.version)
    assert policy.judgement(1).scope == "class" and policy.judgement(1).value == own[1]
    assert "own thresholds for 2 of 3 classes" in first.message
    [(kind, alert)] = publisher.published
    assert kind == "threshold_changed" and alert["class_thresholds"] == stored.thresholds

    # Operators label class 1's near cluster OOD: class 1's own threshold drops below it; class
    # 0's own threshold, fitted on class 0's values and labels only, does not move.
    labelled_ood = window.values[near][:12]
    for sample_id in window.sample_ids[near][:12]:
        store.add_label(int(sample_id), "OOD", "operator")
    for sample_id in window.sample_ids[(window.predicted == 1) & (window.values < 3)][:15]:
        store.add_label(int(sample_id), "ID", "operator")

    second = refit(context)

    again = second.threshold.class_thresholds.per_class()
    assert again[1] < labelled_ood.min() and again[1] < own[1], "the labels of class 1 steer its own threshold"
    assert again[0] == pytest.approx(own[0])
    assert _policy(store, model.id).version == second.threshold.id


def test_a_proposed_per_class_refit_carries_its_class_thresholds_and_activates_them_on_approval(store):
    model = register_model(store, "classifier", "weights-1")
    values, predicted = _classes_window(np.random.default_rng(6))
    write_scores(store, model.id, values, predicted=predicted)
    active = add_threshold(store, model.id, 8.0)
    sections = {"thresholds": {**PER_CLASS["thresholds"], "activation": "propose"}}
    publisher = RecordingPublisher()
    context = context_for(store, publisher, sections=sections, refit_method="two-means")

    result = refit(context)

    proposal = result.proposal
    assert proposal is not None, result.message
    assert _policy(store, model.id).version == active and not _policy(store, model.id).per_class
    candidate = proposal.evaluation.candidate
    own = store.get_threshold(proposal.threshold_id).class_thresholds.per_class()
    assert set(own) == {0, 1} and {int(k): v for k, v in candidate.per_class.items()} == own
    [(kind, alert)] = publisher.published
    assert kind == "threshold_proposed" and {int(k): v for k, v in alert["class_thresholds"].items()} == own
    # The evaluation judged each class by its own candidate threshold.
    shares = {share.predicted_class: share for share in proposal.evaluation.classes}
    assert shares[1].threshold_after == pytest.approx(own[1]) and shares[2].threshold_after == candidate.global_threshold

    proposals.decide(store, proposal.id, "approve", by="admin", note=None, now=NOW + timedelta(hours=1))

    policy = _policy(store, model.id)
    assert policy.version == proposal.threshold_id and dict(policy.per_class) == own
    [activated] = store.list_alerts(kind="threshold_activated")
    assert {int(k): v for k, v in activated.payload.payload.class_thresholds.items()} == own


# --- the stream ------------------------------------------------------------------------------


def _two_class_scorer() -> Scorer:
    """The tiny test classifier with a head that predicts class 0 for dark images, 1 for bright."""
    model = tiny_classifier()
    head = model[-1] = torch.nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.1, 0.1, 0.1, 1.0], [0.1, 0.1, 0.1, -1.0]]))
        head.bias.copy_(torch.tensor([-1.8, 1.8]))
    scorer = Scorer(model.eval(), mean=(0.5,), std=(0.25,), input_shape=INPUT_SHAPE)
    scorer.calibrate(n=64, progress=False)
    return scorer


def _image(brightness: float, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, int(brightness) + 1, (8, 8))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_stream_judges_each_sample_by_its_predicted_classes_threshold(store):
    scorer = _two_class_scorer()
    model = register_model(store, "two-class", scorer.fingerprint(),
                           Preprocessing(input_shape=INPUT_SHAPE, mean=(0.5,), std=(0.25,)))
    images = [_image(brightness, seed) for seed, brightness in enumerate(np.linspace(0, 255, 80))]
    scored = scorer.score_batch(stack_images([decode_image(value, INPUT_SHAPE) for value in images]))
    summary, classes = scored.indicators[INDICATOR].numpy(), scored.predicted.numpy()
    assert set(classes.tolist()) == {0, 1}, "the test needs both classes in the stream"
    # Class 1 gets an own threshold low in its range; the global one, which judges class 0, lies
    # higher: the class 1 samples between the two are flagged only by their own threshold.
    ones = summary[classes == 1]
    own_cut, global_cut = float(np.percentile(ones, 25)), float(np.percentile(ones, 75))
    assert global_cut > own_cut, "the two thresholds must judge differently"
    policy = store.add_threshold(ThresholdRecord(
        model_id=model.id, indicator=INDICATOR, method="two-means", value=global_cut, fitted_by="test",
        class_thresholds=ClassThresholdsDocument(thresholds={"1": own_cut}, min_class_samples=10)))

    broker = LocalBroker(default_partitions=1)
    broker.create_topic("images", 1)
    for index, value in enumerate(images):
        broker.produce("images", value, f"img-{index}".encode())
    consumer = LocalConsumer(broker, ["images"], "scorers")
    parts = PipelineParts(
        decode=image_decoder(INPUT_SHAPE, ImageLimits()), scorer=ScorerAdapter(scorer),
        current_policy=PolicySource(store, model.id, INDICATOR, refresh_s=0.0), write=store.write,
        producer=LocalProducer(broker), commit=consumer.commit, model_id=model.id, model_name="two-class",
        indicator=INDICATOR, dead_letter_topic="images.dlq", alerts_topic="alerts", group_id="scorers",
        batch_size=7, max_batch_wait_s=60.0, decode_threads=1, retry_initial_s=0.0, retry_max_s=0.0)
    head = build_pipeline(parts, Shutdown())
    try:
        while messages := consumer.poll():
            for message in messages:
                head.submit(message)
            head.poll()
        head.join()
    finally:
        head.close()

    window = store.window_scores(model.id, INDICATOR)
    assert len(window) == len(images)
    only_by_own = 0
    for sample_id in window.sample_ids.tolist():
        sample = store.get_sample(sample_id)
        judged = store.policy(sample.threshold_id).judgement(sample.predicted_class)
        assert judged.version == policy.id
        assert (judged.scope, judged.value) == (("class", own_cut) if sample.predicted_class == 1
                                                else ("global", global_cut))
        value = sample.scores[INDICATOR]
        assert sample.flagged == (value > judged.value), sample.sample_key
        only_by_own += sample.predicted_class == 1 and own_cut < value <= global_cut
    assert only_by_own >= 10, "class 1 samples below the global threshold are flagged by their own"
    # Each flagged-sample alert names the threshold that judged its sample.
    alerts = [json.loads(record.value) for record in broker.records("alerts")]
    assert len(alerts) == sum(store.get_sample(int(i)).flagged for i in window.sample_ids)
    for alert in alerts:
        assert alert["threshold"] == (own_cut if alert["predicted_class"] == 1 else global_cut)
        assert alert["threshold_id"] == policy.id


def test_a_replayed_sample_reports_the_own_threshold_of_its_class_that_judged_it(store):
    """An alert sent again for a replayed message carries the threshold that judged the row when it
    was first stored: its predicted class's own where the policy has one, else the global one."""
    from monitor.store import ScoredSample
    from tests.integration.jobs_data import per_class_policy

    model = register_model(store, "fashion-cnn", "sha256:replayed")
    policy, ids = per_class_policy(store, model.id)
    own = policy.class_thresholds.per_class()
    positions = {name: store.get_sample(sample_id).position for name, sample_id in ids.items()}
    # The same messages again (a replay after a crash): their first rows stand, as first judged.
    again = [ScoredSample(topic=position.topic, partition=position.partition, offset=position.offset,
                          sample_key="again", model_id=model.id, received_at=NOW, scored_at=NOW, predicted_class=0,
                          scores={}, flagged=False, score=None, score_indicator=None)
             for position in positions.values()]
    result = store.write(samples=again)

    judged = {name: result.replayed[position] for name, position in positions.items()}
    assert 1 in own and own[1] != pytest.approx(policy.value)
    assert judged["class"].threshold == pytest.approx(own[1])
    assert judged["global"].threshold == pytest.approx(policy.value)
    assert {j.threshold_id for j in judged.values()} == {policy.id}
    assert all(j.flagged for j in judged.values())
