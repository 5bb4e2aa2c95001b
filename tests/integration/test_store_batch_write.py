"""Batch writes with awkward content: on PostgreSQL these go through COPY into a staging table and
one INSERT ... SELECT (monitor/store/bulk.py), on SQLite through executemany; the contract is the same."""

from __future__ import annotations

import math

import pytest

from monitor.names import INDICATORS
from monitor.store import RejectRecord, SourcePosition, StoreError
from tests.integration.store_samples import T0, model, png_blob, scored, threshold  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration  # the store fixtures run on the real PostgreSQL too


def with_key(sample, sample_key: str, topic: str | None = None):
    fields = {**sample.__dict__, "sample_key": sample_key}
    if topic is not None:
        fields["topic"] = topic
    return type(sample)(**fields)


def test_a_replay_mixed_with_new_rows_and_repeats_returns_the_stored_ids(store, model, threshold):
    first = store.write([scored(i, model.id, flagged=i == 1, threshold_id=threshold.id if i == 1 else None)
                         for i in range(3)])

    # Positions 0-2 are replays, 3 and 4 are new, 3 comes twice.
    batch = [scored(i, model.id) for i in (2, 3, 0, 3, 4, 1)]
    result = store.write(batch)

    assert (result.samples_inserted, result.samples_duplicate) == (2, 4)
    assert set(result.replayed) == {SourcePosition("images", 0, i) for i in range(3)}
    for position, judged in result.replayed.items():
        assert judged.sample_id == first.sample_ids[position]
    assert result.replayed[SourcePosition("images", 0, 1)].flagged  # as judged when first stored
    assert result.replayed[SourcePosition("images", 0, 1)].threshold_id == threshold.id
    new_ids = [result.sample_ids[SourcePosition("images", 0, i)] for i in (3, 4)]
    assert new_ids[0] < new_ids[1] and min(new_ids) > max(first.sample_ids.values())
    assert store.count_samples() == 5


def test_the_first_of_two_rows_with_one_position_is_the_one_kept(store, model):
    first = scored(4, model.id, predicted_class=1, score=1.5)
    again = scored(4, model.id, predicted_class=2, score=2.5)

    result = store.write([first, scored(5, model.id), again])

    assert (result.samples_inserted, result.samples_duplicate) == (2, 1)
    detail = store.get_sample(result.sample_ids[first.position])
    assert (detail.predicted_class, detail.score) == (1, 1.5)
    assert result.sample_ids[first.position] < result.sample_ids[SourcePosition("images", 0, 5)]


def test_the_first_of_two_rows_with_one_position_keeps_its_image_and_only_it(store, model):
    from sqlalchemy import select

    from monitor.store.models import SampleImage

    first = scored(4, model.id, image=png_blob(b"first"))
    again = scored(4, model.id, image=png_blob(b"again"))

    result = store.write([first, again])

    assert (result.samples_inserted, result.samples_duplicate, result.images_inserted) == (1, 1, 1)
    with store.engine.connect() as connection:
        images = connection.execute(select(SampleImage.sample_id, SampleImage.data)).all()
    assert [(sample_id, bytes(data)) for sample_id, data in images] == [
        (result.sample_ids[first.position], first.image.data)]


def test_nan_none_and_infinite_values(store, model, threshold):
    scores = {name: float(index) for index, name in enumerate(INDICATORS)}
    scores.update({"MP": math.nan, "H": None, "ODIN": math.inf, "NORM": -math.inf, "ANG": -0.0, "ACT": 1e-308})
    del scores["DSS-EXT"]
    infinite = scored(0, model.id, scores=scores, score=math.inf, flagged=True, threshold_id=threshold.id)
    unscored = scored(1, model.id, scores={name: math.nan for name in INDICATORS}, score=math.nan)

    result = store.write([infinite, unscored])

    detail = store.get_sample(result.sample_ids[infinite.position])
    assert detail.scores["MP"] is None and detail.scores["H"] is None and detail.scores["DSS-EXT"] is None
    assert detail.scores["ODIN"] == math.inf and detail.scores["NORM"] == -math.inf
    assert detail.scores["ANG"] == 0.0 and detail.scores["ACT"] == 1e-308
    assert detail.scores["1C-Sum"] == scores["1C-Sum"]
    assert detail.score == math.inf and detail.flagged and detail.threshold_id == threshold.id
    empty = store.get_sample(result.sample_ids[unscored.position])
    assert all(value is None for value in empty.scores.values()) and empty.score is None


KEYS = [
    "ключ-画像-🙂",
    "<script>alert('x')</script> & \"quotes\"",
    "tab\there, newline\nhere, backslash \\N and \\. and a comma, too",
    "k" * 255,
    "é" * 255,  # 255 characters, 510 bytes in UTF-8
    "",
]


def test_unicode_markup_control_and_long_keys_are_stored_exactly(store, model):
    batch = [with_key(scored(i, model.id), key) for i, key in enumerate(KEYS)]
    batch.append(with_key(scored(0, model.id), "same offset, other topic", topic="τόπος-" + "t" * 249))

    result = store.write(batch)

    assert result.samples_inserted == len(batch)
    for sample in batch:
        detail = store.get_sample(result.sample_ids[sample.position])
        assert detail.sample_key == sample.sample_key and detail.position == sample.position


def test_a_batch_of_rejects_only(store):
    rejects = [RejectRecord(topic="images", partition=0, offset=i, sample_key=f"bad-{i}-ключ", reason="corrupt",
                            detail="PNG truncated", size=12, received_at=T0) for i in range(3)]

    first = store.write(rejects=rejects)
    replay = store.write(rejects=rejects)

    assert (first.samples_inserted, first.rejects_inserted, first.rejects_duplicate) == (0, 3, 0)
    assert (replay.rejects_inserted, replay.rejects_duplicate) == (0, 3)
    assert first.sample_ids == {} and store.count_samples() == 0
    from sqlalchemy import select

    from monitor.store.models import Reject

    # The rejects table is the operators' record of dead letters, read with SQL: keys kept exactly.
    with store.engine.connect() as connection:
        keys = connection.execute(select(Reject.sample_key)).scalars().all()
    assert sorted(keys) == [f"bad-{i}-ключ" for i in range(3)]


def test_a_large_batch_returns_every_id_in_batch_order(store, model, threshold):
    batch = [scored(i, model.id, partition=i % 3, flagged=i % 20 == 0, threshold_id=threshold.id if i % 20 == 0 else None,
                    image=png_blob(bytes([i % 256])) if i % 20 == 0 else None) for i in range(5_000)]

    result = store.write(batch)

    assert (result.samples_inserted, result.samples_duplicate, result.images_inserted) == (5_000, 0, 250)
    ids = [result.sample_ids[sample.position] for sample in batch]
    assert all(earlier < later for earlier, later in zip(ids, ids[1:]))  # inserted in batch order
    assert store.count_samples() == 5_000 and store.count_samples(flagged=True) == 250
    for sample in batch[::499]:
        assert store.find_sample(sample.position) == result.sample_ids[sample.position]
        assert store.get_sample(result.sample_ids[sample.position]).sample_key == sample.sample_key
    assert store.write(batch).replayed.keys() == {sample.position for sample in batch}


def test_a_refused_batch_leaves_nothing_behind_for_the_next_one(store, model):
    good = [scored(i, model.id) for i in range(3)]
    with pytest.raises(StoreError, match="nothing was stored"):
        store.write([*good, scored(9, model.id + 1000)])  # no such model

    result = store.write([scored(i, model.id) for i in (5, 6)])

    assert set(result.sample_ids) == {SourcePosition("images", 0, 5), SourcePosition("images", 0, 6)}
    assert store.count_samples() == 2
