"""The write path: one transaction per batch, replays absorbed by the source position."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from monitor.errors import InputError
from monitor.names import INDICATORS
from monitor.store import RejectRecord, SourcePosition, StoreError
from tests.integration.store_samples import T0, model, png_blob, scored, threshold  # noqa: F401 - fixtures
from monitor.store.payloads import ModelPreprocessing, NoiseCalibration, PayloadError
from tests.store_data import FASHION_PREPROCESSING, noise_calibration, register_model

pytestmark = pytest.mark.integration  # the store fixtures run on the real PostgreSQL too


def reject(offset: int, partition: int = 1) -> RejectRecord:
    return RejectRecord(
        topic="images", partition=partition, offset=offset, sample_key=f"bad-{offset}", reason="corrupt",
        detail="PNG truncated after 12 bytes", size=12, received_at=T0,
    )


def test_a_sample_is_stored_with_every_field(store, model, threshold):
    scores = {name: index * 0.5 for index, name in enumerate(INDICATORS)}
    scores["ODIN"] = None  # not computed in the stream
    scores["ANG"] = math.nan  # degenerate value: stored as unavailable
    del scores["DSS-EXT"]  # not supported by this model
    sample = scored(7, model.id, flagged=True, threshold_id=threshold.id, predicted_class=3, scores=scores,
                    score=9.5, image=png_blob(b"seven"))

    result = store.write([sample])

    detail = store.get_sample(result.sample_ids[sample.position])
    assert detail.position == SourcePosition("images", 0, 7)
    assert detail.sample_key == sample.sample_key
    assert (detail.produced_at, detail.received_at, detail.scored_at) == (
        sample.produced_at, sample.received_at, sample.scored_at)
    assert detail.scored_at.tzinfo is not None
    assert detail.predicted_class == 3 and detail.flagged and detail.threshold_id == threshold.id
    assert (detail.score, detail.score_indicator) == (9.5, "1C-Sum")
    assert detail.scores["ODIN"] is None and detail.scores["ANG"] is None and detail.scores["DSS-EXT"] is None
    assert detail.scores["MP"] == 0.0 and detail.scores["1C-Sum"] == scores["1C-Sum"]
    assert store.get_image(detail.id).data == png_blob(b"seven").data
    assert (detail.image_content_type, detail.image_width, detail.image_height) == ("image/png", 28, 28)
    assert detail.labels == [] and detail.label is None


def test_replaying_a_batch_stores_it_once(store, model, threshold):
    batch = [scored(i, model.id, flagged=i % 2 == 0, threshold_id=threshold.id,
                    image=png_blob(bytes([i])) if i % 2 == 0 else None) for i in range(10)]
    rejects = [reject(0), reject(1)]

    first = store.write(batch, rejects)
    replay = store.write(batch, rejects)

    assert (first.samples_inserted, first.samples_duplicate, first.images_inserted) == (10, 0, 5)
    assert (first.rejects_inserted, first.rejects_duplicate) == (2, 0)
    assert (replay.samples_inserted, replay.samples_duplicate, replay.images_inserted) == (0, 10, 0)
    assert (replay.rejects_inserted, replay.rejects_duplicate) == (0, 2)
    assert replay.sample_ids == {}
    assert store.count_samples() == 10
    # A replay reports how each sample was judged when first stored, so its alerts do not depend
    # on the threshold active now.
    assert first.replayed == {}
    assert set(replay.replayed) == {SourcePosition("images", 0, i) for i in range(10)}
    for i in range(10):
        judged = replay.replayed[SourcePosition("images", 0, i)]
        assert judged.sample_id == first.sample_ids[SourcePosition("images", 0, i)]
        assert judged.flagged == (i % 2 == 0)
        assert (judged.threshold, judged.threshold_id) == (5.5, threshold.id)
        assert judged.score == batch[i].score and judged.indicator == batch[i].score_indicator


def test_a_partly_replayed_batch_inserts_only_the_new_positions(store, model):
    store.write([scored(i, model.id) for i in range(5)])

    result = store.write([scored(i, model.id) for i in range(3, 8)])

    assert (result.samples_inserted, result.samples_duplicate) == (3, 2)
    assert set(result.sample_ids) == {SourcePosition("images", 0, i) for i in (5, 6, 7)}
    assert set(result.replayed) == {SourcePosition("images", 0, i) for i in (3, 4)}
    assert all(not judged.flagged and judged.threshold is None for judged in result.replayed.values())
    assert store.count_samples() == 8


def test_the_same_position_twice_in_one_batch_is_stored_once(store, model):
    result = store.write([scored(4, model.id), scored(4, model.id), scored(5, model.id)])

    assert (result.samples_inserted, result.samples_duplicate) == (2, 1)
    assert store.count_samples() == 2


def test_positions_differ_by_topic_and_partition(store, model):
    batch = [scored(0, model.id, topic="a"), scored(0, model.id, topic="b"), scored(0, model.id, topic="a", partition=1)]

    assert store.write(batch).samples_inserted == 3


def test_a_failing_row_leaves_nothing_of_its_batch(store, model):
    good = [scored(i, model.id, image=png_blob()) for i in range(4)]
    orphan = scored(99, model.id + 1000)  # no such model: the foreign key refuses this row

    with pytest.raises(StoreError, match="nothing was stored"):
        store.write([*good[:2], orphan, *good[2:]], [reject(0)])

    assert store.count_samples() == 0
    # The same rows go in once the bad one is gone: nothing of the failed batch, its reject included, was kept.
    again = store.write(good, [reject(0)])
    assert (again.samples_inserted, again.rejects_inserted, again.rejects_duplicate) == (4, 1, 0)


def test_a_failing_image_row_rolls_back_the_samples_written_before_it(store, model):
    # SQLite does not enforce VARCHAR lengths, so the refusal here is a NULL in a NOT NULL column.
    from monitor.store import ImageBlob

    broken = ImageBlob(content_type="image/png", data=b"x", width=2, height=2)
    object.__setattr__(broken, "content_type", None)  # slipped past validation as a real bug might
    with pytest.raises(StoreError):
        store.write([scored(0, model.id), scored(1, model.id, image=broken)])

    assert store.count_samples() == 0


def test_records_reject_bad_input_with_clear_messages(store, model):
    with pytest.raises(InputError, match="unknown indicator 'ANGLE'"):
        scored(0, model.id, scores={"ANGLE": 1.0})
    with pytest.raises(InputError, match="threshold_id"):
        scored(0, model.id, flagged=True)
    with pytest.raises(InputError, match="offset must be an integer >= 0"):
        scored(-1, model.id)
    with pytest.raises(InputError, match="offset must be an integer >= 0 and < 2\\*\\*63"):
        scored(2**63, model.id, seconds=0)
    with pytest.raises(InputError, match="topic must be a string of 1 to 255"):
        scored(0, model.id, topic="t" * 256)
    with pytest.raises(InputError, match="reason"):
        RejectRecord(topic="t", partition=0, offset=0, sample_key="k", reason="", detail="", size=0, received_at=T0)


def test_models_are_registered_once_per_name_and_weights(store):
    first = register_model(store, "cnn", "sha256:1")
    again = register_model(store, "cnn", "sha256:1")
    retrained = register_model(store, "cnn", "sha256:2")

    assert again == first
    assert retrained.id != first.id
    assert [m.id for m in store.list_models()] == [retrained.id, first.id]  # newest first
    assert store.get_model(first.id).preprocessing == ModelPreprocessing.from_json(FASHION_PREPROCESSING.to_dict())
    assert store.get_model(first.id).preprocessing.input_shape == (1, 28, 28)


def test_calibrations_are_cached_per_fingerprint_and_replaced(store):
    assert store.get_calibration("sha256:1") is None
    first = noise_calibration()
    second = {**first, "means": {name: mean + 1.0 for name, mean in first["means"].items()}}
    store.save_calibration("sha256:1", first)
    store.save_calibration("sha256:1", second)

    assert store.get_calibration("sha256:1") == NoiseCalibration.from_json(second)
    with pytest.raises(PayloadError, match="'stds' missing"):
        store.save_calibration("sha256:1", {key: value for key, value in first.items() if key != "stds"})


def test_naive_timestamps_are_taken_as_utc(store, model):
    naive = scored(0, model.id)
    naive = type(naive)(**{**naive.__dict__, "scored_at": T0.replace(tzinfo=None) + timedelta(hours=1)})

    detail = store.get_sample(store.write([naive]).sample_ids[naive.position])

    assert detail.scored_at == T0 + timedelta(hours=1)


def test_concurrent_overlapping_batches_store_each_position_once(store, model):
    from concurrent.futures import ThreadPoolExecutor

    # Four writers, each batch overlapping its neighbours by half: as after a consumer-group rebalance.
    batches = [[scored(i, model.id) for i in range(start, start + 64)] for start in range(0, 256, 32)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(store.write, batches))

    assert store.count_samples() == 32 * 9
    assert sum(result.samples_inserted for result in results) == 32 * 9
    reported = [sample_id for result in results for sample_id in result.sample_ids.values()]
    assert len(reported) == len(set(reported)) == 32 * 9  # every new id reported to exactly one writer
