"""The policy (threshold and 1C-Sum weights) is never seen half-applied: a refit that replaces it
while batches stream through leaves every stored row scored with the weights and judged by the
threshold of one and the same policy version (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from monitor.classifiers import Preprocessing
from monitor.imaging import ImageLimits, decode_image, stack_images
from monitor.store import ThresholdRecord
from monitor.stream.local import LocalBroker, LocalConsumer, LocalProducer
from monitor.stream.pipeline import PipelineParts, PolicySource, ScorerAdapter, build_pipeline, image_decoder
from monitor.stream.steps import Shutdown
from tests.store_data import register_model, summary_weights
from tests.unit.stream_parts import INPUT_SHAPE, png, tiny_scorer

pytestmark = pytest.mark.integration

MESSAGES = 240


def test_a_refit_racing_the_stream_never_scores_and_judges_a_batch_with_two_policies(store):
    scorer = tiny_scorer()
    calibration = scorer.calibration
    members = calibration.members
    model = register_model(store, "tiny", scorer.fingerprint(),
                           Preprocessing(input_shape=INPUT_SHAPE, mean=(0.5,), std=(0.25,)))
    images = [png(seed=seed) for seed in range(MESSAGES)]

    # Two fits on different scales: the second weighs the members 5 to 10 times the first. The
    # first's threshold flags three in four of its scores, the second's one in four of its own, so
    # a batch judged by the other fit's threshold shows at once.
    fits = [{name: 1.0 for name in members}, {name: (10.0 if index == 0 else 5.0) for index, name in enumerate(members)}]
    pixels = stack_images([decode_image(value, INPUT_SHAPE) for value in images])
    thresholds, summaries = [], []
    for weights, flagged_share in zip(fits, (75, 25)):
        scorer.reset_summary_weights()
        scorer.set_summary_weights(weights)
        summaries.append(scorer.score_batch(pixels).indicators["1C-Sum"].numpy())
        thresholds.append(float(np.percentile(summaries[-1], 100 - flagged_share)))
    scorer.reset_summary_weights()
    for own, other in ((0, 1), (1, 0)):
        changed = np.count_nonzero((summaries[own] > thresholds[own]) != (summaries[own] > thresholds[other]))
        assert changed >= MESSAGES // 4, f"the two fits must judge differently ({changed} verdicts differ)"

    def refit(index: int):
        return store.add_threshold(ThresholdRecord(model_id=model.id, indicator="1C-Sum", method="two-means",
                                                   value=thresholds[index % 2], fitted_by="race"),
                                   weights=summary_weights(fits[index % 2]))

    refit(0)
    broker = LocalBroker(default_partitions=2)
    broker.create_topic("images", 2)
    for index, value in enumerate(images):
        broker.produce("images", value, f"img-{index}".encode())
    consumer = LocalConsumer(broker, ["images"], "scorers")
    parts = PipelineParts(
        decode=image_decoder(INPUT_SHAPE, ImageLimits()), scorer=ScorerAdapter(scorer),
        current_policy=PolicySource(store, model.id, "1C-Sum", refresh_s=0.0), write=store.write,
        producer=LocalProducer(broker), commit=consumer.commit, model_id=model.id, model_name="tiny",
        indicator="1C-Sum", dead_letter_topic="images.dlq", alerts_topic=None, group_id="scorers", batch_size=3,
        max_batch_wait_s=60.0, decode_threads=2, retry_initial_s=0.0, retry_max_s=0.0)
    head = build_pipeline(parts, Shutdown())

    done = threading.Event()
    refits = []

    def keep_refitting():
        while not done.is_set():
            refits.append(refit(len(refits) + 1).id)

    refitter = threading.Thread(target=keep_refitting, name="refit", daemon=True)
    refitter.start()
    try:
        while messages := consumer.poll():
            for message in messages:
                head.submit(message)
            head.poll()
        head.join()
    finally:
        done.set()
        refitter.join(timeout=60)
        head.close()

    assert not refitter.is_alive()
    versions = {}
    checked = 0
    for sample_id in store.window_scores(model.id, "1C-Sum").sample_ids.tolist():
        sample = store.get_sample(sample_id)
        if sample.threshold_id not in versions:
            policy = store.policy(sample.threshold_id)  # the policy the sample page says judged it
            versions[sample.threshold_id] = (policy.threshold, policy.weights)
        threshold, weights = versions[sample.threshold_id]
        expected = sum(weights[name] * (sample.scores[name] - calibration.means[name]) / calibration.stds[name]
                       for name in members)
        where = f"sample {sample.sample_key} judged by policy #{sample.threshold_id}"
        assert math.isclose(sample.scores["1C-Sum"], expected, rel_tol=1e-6, abs_tol=1e-6), \
            f"{where}: scored with other weights than the policy's"
        assert sample.flagged == (sample.scores["1C-Sum"] > threshold), \
            f"{where}: judged by another threshold than the policy's"
        checked += 1
    assert checked == MESSAGES
    assert len(refits) >= 3 and len(versions) >= 2, f"the race was not run: {len(refits)} refits, {len(versions)} versions"

