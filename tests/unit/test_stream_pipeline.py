"""The stream's pipeline end to end on the in-memory broker, a real SQLite store and a real Scorer."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.exc import OperationalError

from monitor.classifiers import Preprocessing
from monitor.imaging import ImageLimits, decode_image
from monitor.imaging_device import assemble, deferring_decoder
from monitor.store import ThresholdRecord
from monitor.stream.local import LocalBroker, LocalConsumer, LocalProducer
from monitor.stream.messages import original_value
from monitor.stream.pipeline import PipelineParts, PolicySource, ScorerAdapter, build_pipeline, image_decoder
from monitor.stream.steps import Batch, BatchAbandoned, PolicyRefused, Shutdown
from tests.store_data import register_model, summary_weights
from tests.unit.stream_parts import INPUT_SHAPE, corpus, png, sqlite_store, tiny_scorer

TOPIC, DLQ, ALERTS, GROUP = "images", "images.dlq", "alerts", "scorers"
LIMITS = ImageLimits(max_bytes=2000)


@pytest.fixture(scope="module")
def scorer():
    return tiny_scorer()


@pytest.fixture
def store(tmp_path):
    store = sqlite_store(tmp_path / "stream.db")
    yield store
    store.close()


class Harness:
    """A pipeline over the local broker; `drain()` consumes everything there is, then joins."""

    def __init__(self, scorer, store, *, batch_size=4, write=None, threshold_refresh_s=0.0, partitions=2,
                 decode_threads=2, device_decode=False):
        self.broker = LocalBroker(default_partitions=partitions)
        self.broker.create_topic(TOPIC, partitions)
        self.store = store
        self.model = register_model(store, "tiny", scorer.fingerprint(),
                                     Preprocessing(input_shape=INPUT_SHAPE, mean=(0.5,), std=(0.25,)))
        self.consumer = LocalConsumer(self.broker, [TOPIC], GROUP)
        self.shutdown = Shutdown()
        self.policies = PolicySource(store, self.model.id, "1C-Sum", threshold_refresh_s)
        self.batches: list[Batch] = []
        self.commits: list[dict] = []
        self.write_calls = 0

        def commit(offsets):
            self.commits.append(offsets)
            self.consumer.commit(offsets)

        def counting_write(samples, rejects):
            self.write_calls += 1
            return (write or store.write)(samples=samples, rejects=rejects)

        self.parts = PipelineParts(
            # device_decode: JPEGs decoded with their batch, as on a GPU (here torchvision's CPU decoder)
            decode=image_decoder(INPUT_SHAPE, LIMITS, decoder=deferring_decoder() if device_decode else None),
            scorer=ScorerAdapter(scorer, (lambda pixels: assemble(pixels, INPUT_SHAPE, "cpu", LIMITS))
                                 if device_decode else None),
            current_policy=self.policies, write=counting_write, producer=LocalProducer(self.broker),
            commit=commit, model_id=self.model.id, model_name="tiny", indicator="1C-Sum", dead_letter_topic=DLQ,
            alerts_topic=ALERTS, group_id=GROUP, batch_size=batch_size, max_batch_wait_s=60.0, decode_threads=decode_threads,
            retry_initial_s=0.0, retry_max_s=0.0)
        self.head = build_pipeline(self.parts, self.shutdown, [self.batches.append])

    def send(self, value: bytes, key: str | None = None, partition: int | None = None):
        return self.broker.produce(TOPIC, value, key.encode() if key is not None else None, partition=partition)

    def drain(self):
        while messages := self.consumer.poll():
            for message in messages:
                self.head.submit(message)
            self.head.poll()
        self.head.join()

    def dead_letters(self):
        return [json.loads(record.value) for record in self.broker.records(DLQ)]

    def alerts(self):
        return [json.loads(record.value) for record in self.broker.records(ALERTS)]

    def committed(self):
        return {partition: self.broker.committed_offset(GROUP, TOPIC, partition) for partition in range(2)}


def _count(store, table):
    with store.engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


@pytest.mark.parametrize("decode_threads", [2, 0], ids=["threads", "one-thread"])
def test_every_message_ends_as_one_score_row_or_one_reject_row_with_a_dead_letter(scorer, store, decode_threads):
    harness = Harness(scorer, store, decode_threads=decode_threads)
    messages = corpus()
    for name, (value, _reason) in messages.items():
        harness.send(value, key=name)
    harness.drain()

    scored = {name for name, (_, reason) in messages.items() if reason is None}
    rejected = {name: reason for name, (_, reason) in messages.items() if reason is not None}
    assert _count(store, "samples") == len(scored)
    assert _count(store, "rejects") == len(rejected)
    with store.engine.connect() as connection:
        keys = {row[0] for row in connection.exec_driver_sql("SELECT sample_key FROM samples")}
        reasons = dict(connection.exec_driver_sql("SELECT sample_key, reason FROM rejects").all())
    assert keys == scored
    assert reasons == rejected
    letters = {letter["sample_key"]: letter for letter in harness.dead_letters()}
    assert {key: letter["reason"] for key, letter in letters.items()} == rejected
    for name, letter in letters.items():
        assert letter["kind"] == "dead_letter" and letter["schema_version"] == 1
        assert original_value(letter) == messages[name][0]  # the original bytes travel with the reason
        assert letter["source"]["topic"] == TOPIC and letter["group_id"] == GROUP
    # every offset of both partitions is committed, and only after the rows were written
    ends = {partition: len(log) for partition, log in enumerate(harness.broker.partitions[TOPIC])}
    assert harness.committed() == {p: (end or None) for p, end in ends.items()}


def test_a_message_without_key_is_named_by_its_position(scorer, store):
    harness = Harness(scorer, store)
    partition, offset = harness.send(png(seed=5))
    harness.drain()
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT sample_key FROM samples").scalar_one() == f"{TOPIC}/{partition}/{offset}"


def test_replay_after_a_crash_stores_nothing_twice(scorer, store):
    harness = Harness(scorer, store)
    for index, (value, _) in enumerate(corpus().values()):
        harness.send(value, key=f"m{index}")
    harness.drain()
    samples, rejects = _count(store, "samples"), _count(store, "rejects")
    harness.broker.committed.clear()  # as if the process died after storing, before committing
    harness.consumer.seek_to_committed()
    harness.drain()
    assert (_count(store, "samples"), _count(store, "rejects")) == (samples, rejects)
    assert sum(b.write_result.samples_duplicate + b.write_result.rejects_duplicate for b in harness.batches[-3:]) > 0


@pytest.mark.parametrize("decode_threads", [2, 0], ids=["threads", "one-thread"])
def test_database_outage_is_retried_and_nothing_is_committed_until_stored(scorer, store, decode_threads):
    failures = {"left": 3}
    commits_while_down: list[int] = []
    harness = None

    def flaky_write(samples, rejects):
        if failures["left"]:
            failures["left"] -= 1
            commits_while_down.append(len(harness.commits))
            raise OperationalError("INSERT", {}, Exception("database is down"))
        return store.write(samples=samples, rejects=rejects)

    harness = Harness(scorer, store, decode_threads=decode_threads, write=flaky_write, batch_size=8)
    for seed in range(5):
        harness.send(png(seed=seed), key=f"s{seed}")
    harness.drain()
    assert failures["left"] == 0
    assert commits_while_down == [0, 0, 0]  # nothing committed while the batch was not stored
    assert harness.write_calls == 4
    assert _count(store, "samples") == 5
    assert sum(offset for commit in harness.commits for offset in commit.values()) == 5


@pytest.mark.parametrize("decode_threads", [2, 0], ids=["threads", "one-thread"])
def test_shutdown_abandons_a_batch_that_cannot_be_stored_and_commits_nothing(scorer, store, decode_threads):
    def down(samples, rejects):
        harness.shutdown.abandon_now()  # SIGTERM twice while the database is down
        raise OperationalError("INSERT", {}, Exception("database is down"))

    harness = Harness(scorer, store, decode_threads=decode_threads, write=down)
    harness.send(png(seed=1), key="a")
    with pytest.raises(BatchAbandoned):
        harness.drain()
    harness.head.discard()
    assert harness.commits == [] and harness.committed() == {0: None, 1: None}
    assert _count(store, "samples") == 0


def test_flagged_samples_use_the_stored_threshold_and_raise_alerts(scorer, store):
    harness = Harness(scorer, store, batch_size=6)
    for seed in range(6):
        harness.send(png(seed=seed), key=f"before{seed}")
    harness.drain()
    assert _count(store, "samples") == 6
    with store.engine.connect() as connection:
        values = sorted(row[0] for row in connection.exec_driver_sql("SELECT score FROM samples"))
    assert harness.alerts() == []  # no threshold yet: nothing flagged
    cut = (values[2] + values[3]) / 2
    threshold = store.add_threshold(ThresholdRecord(model_id=harness.model.id, indicator="1C-Sum",
                                                    method="manual", value=cut))
    for seed in range(6):
        harness.send(png(seed=seed), key=f"after{seed}")  # same images: the top three are flagged
    harness.drain()
    with store.engine.connect() as connection:
        flagged = connection.exec_driver_sql(
            "SELECT sample_key, score, threshold_id FROM samples WHERE flagged").all()
        kept = connection.exec_driver_sql("SELECT count(*) FROM sample_images").scalar_one()
    assert len(flagged) == 3 and all(key.startswith("after") and score > cut for key, score, _ in flagged)
    assert {row[2] for row in flagged} == {threshold.id}
    assert kept >= 3  # flagged images are always kept for labelling
    alerts = harness.alerts()
    assert sorted(alert["sample_key"] for alert in alerts) == sorted(key for key, _, _ in flagged)
    alert = alerts[0]
    assert alert["kind"] == "flagged_sample" and alert["threshold"] == pytest.approx(cut)
    assert alert["indicator"] == "1C-Sum" and alert["model"] == {"id": harness.model.id, "name": "tiny"}
    assert alert["score"] > cut and alert["source"]["topic"] == TOPIC and alert["time"].endswith("Z")
    assert isinstance(alert["sample_id"], int)


def test_alerts_topic_outage_is_retried_before_the_commit(scorer, store):
    harness = Harness(scorer, store)
    harness.broker.fail_sends = 2
    harness.send(b"", key="empty")
    harness.drain()
    assert [letter["reason"] for letter in harness.dead_letters()] == ["empty"]
    assert harness.committed()[0] == 1 or harness.committed()[1] == 1


def test_policy_source_keeps_the_last_policy_when_the_store_is_unreadable(scorer, store):
    harness = Harness(scorer, store)
    store.add_threshold(ThresholdRecord(model_id=harness.model.id, indicator="1C-Sum", method="manual", value=1.5))
    assert harness.policies().threshold == 1.5

    class Broken:
        def active_policy(self, *_):
            raise OperationalError("SELECT", {}, Exception("down"))

    harness.policies.store = Broken()
    assert harness.policies().threshold == 1.5


def test_abandoned_pending_work_is_not_committed_on_discard(scorer, store):
    harness = Harness(scorer, store, batch_size=100)
    harness.send(png(seed=1), key="x")
    for message in harness.consumer.poll():
        harness.head.submit(message)
    harness.head.poll()  # the batch waits for more (max wait is long)
    harness.head.discard()
    assert harness.commits == [] and _count(store, "samples") == 0


def test_a_policy_s_weights_are_applied_to_the_scorer_and_weights_it_cannot_apply_flag_nothing(scorer, store):
    harness = Harness(scorer, store)
    source = PolicySource(store, harness.model.id, "1C-Sum", 0.0)
    adapter = ScorerAdapter(scorer)
    member = scorer.summary_members[0]
    record = ThresholdRecord(model_id=harness.model.id, indicator="1C-Sum", method="two-means", value=1.0)
    store.add_threshold(record, weights=summary_weights({member: 0.25}))
    try:
        adapter([decode_image(png(seed=1), INPUT_SHAPE)], source())
        assert scorer.summary_weights[member] == 0.25
        adapter([decode_image(png(seed=1), INPUT_SHAPE)], None)  # no policy: uniform weights
        assert scorer.summary_weights[member] == 1.0

        # Weights for members this model does not have: the policy is refused, not half-applied.
        store.add_threshold(record, weights=summary_weights({"NOT-A-MEMBER": 2.0}))
        with pytest.raises(PolicyRefused, match="NOT-A-MEMBER"):
            adapter([decode_image(png(seed=1), INPUT_SHAPE)], source())
        assert set(scorer.summary_weights.values()) == {1.0}
        harness.send(png(seed=2), key="after")
        harness.drain()
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT flagged, threshold_id FROM samples").all() == [(False, None)]
    finally:
        scorer.reset_summary_weights()


def test_an_image_the_scorer_refuses_becomes_a_reject_and_the_rest_is_scored(scorer, store):
    import torch

    from monitor.stream.steps import UNSCORABLE, Decoded

    harness = Harness(scorer, store, batch_size=3)
    good_decode = harness.parts.decode

    def decode_with_a_bad_tensor(message):
        decoded = good_decode(message)
        if message.sample_key == "bad":  # pixels outside [0, 1]: the Scorer refuses them
            decoded = Decoded(message, pixels=torch.full(INPUT_SHAPE, 2.0), image_format="png")
        return decoded

    harness.head.work = decode_with_a_bad_tensor
    for key in ("a", "bad", "b"):
        harness.send(png(seed=len(key)), key=key)
    harness.drain()
    with store.engine.connect() as connection:
        scored = {row[0] for row in connection.exec_driver_sql("SELECT sample_key FROM samples")}
        rejected = connection.exec_driver_sql("SELECT sample_key, reason FROM rejects").all()
    assert scored == {"a", "b"}
    assert rejected == [("bad", UNSCORABLE)]
    assert [letter["reason"] for letter in harness.dead_letters()] == [UNSCORABLE]


def test_closing_the_head_of_the_chain_stops_every_worker_thread(scorer, store):
    import threading

    before = set(threading.enumerate())  # other tests' pipelines may still hold threads
    harness = Harness(scorer, store, batch_size=2)
    for key in ("a", "b", "c"):
        harness.send(png(seed=len(key)), key=key)
    harness.drain()
    workers = set(threading.enumerate()) - before
    assert {thread.name.split("_")[0] for thread in workers} == {"decode", "score", "store"}

    harness.head.close()

    assert not [thread.name for thread in workers if thread.is_alive()], "a step's pool outlived close()"


def test_the_one_thread_chain_runs_every_step_on_the_callers_thread(scorer, store):
    # decode_threads = 0: no Python thread of the pipeline's runs beside the Scorer (docs/daemon.md).
    import threading

    before = set(threading.enumerate())
    harness = Harness(scorer, store, batch_size=2, decode_threads=0)
    for key in ("a", "b", "c"):
        harness.send(png(seed=len(key)), key=key)
    harness.drain()
    assert set(threading.enumerate()) - before == set()
    assert _count(store, "samples") == 3 and sum(o or 0 for o in harness.committed().values()) == 3


def test_any_key_becomes_a_storable_sample_id_and_the_batch_goes_through(scorer, store):
    harness = Harness(scorer, store, batch_size=4)
    keys = [b"\xff" * 70, b"cam\x00-7", b"a" * 300, b"a" * 299 + b"b"]
    for key in keys:
        harness.broker.produce(TOPIC, png(seed=len(key)), key)
    harness.drain()

    with store.engine.connect() as connection:
        stored = [row[0] for row in connection.exec_driver_sql("SELECT sample_key FROM samples")]
    assert len(stored) == 4 and len(set(stored)) == 4, "distinct keys stay distinct"
    assert all(len(key) <= 255 and "\x00" not in key for key in stored)
    assert "cam\\x00-7" in stored
    assert sum(harness.committed().values()) == 4


def test_a_dead_letter_too_large_for_the_broker_is_sent_without_the_original_bytes(scorer, store):
    harness = Harness(scorer, store, batch_size=2)
    harness.broker.max_message_bytes = 20_000
    broken = b"\x89PNG\r\n\x1a\n" + bytes(30_000)  # a PNG signature, then nothing decodable
    harness.send(broken, key="big")
    harness.send(png(seed=1), key="fine")
    harness.drain()

    [letter] = harness.dead_letters()
    assert letter["sample_key"] == "big" and letter["value_base64"] is None and letter["value_truncated"]
    assert _count(store, "rejects") == 1 and _count(store, "samples") == 1
    assert sum(harness.committed().values()) == 2


def test_a_replay_alerts_on_the_stored_judgement_whatever_the_threshold_is_now(scorer, store):
    harness = Harness(scorer, store, batch_size=6)
    for seed in range(6):
        harness.send(png(seed=seed), key=f"s{seed}", partition=0)
    harness.drain()
    with store.engine.connect() as connection:
        values = sorted(row[0] for row in connection.exec_driver_sql("SELECT score FROM samples"))
    cut = (values[2] + values[3]) / 2
    first = store.add_threshold(ThresholdRecord(model_id=harness.model.id, indicator="1C-Sum",
                                                method="manual", value=cut))
    for seed in range(6):
        harness.send(png(seed=seed), key=f"t{seed}", partition=1)
    harness.drain()
    flagged = sorted(alert["sample_key"] for alert in harness.alerts())
    assert len(flagged) == 3

    def replay_partition_1_with_threshold(value):
        store.add_threshold(ThresholdRecord(model_id=harness.model.id, indicator="1C-Sum",
                                            method="manual", value=value))
        harness.broker.committed[(GROUP, TOPIC, 1)] = 0  # the process died after storing, before committing
        harness.consumer.seek_to_committed()
        harness.drain()
        return harness.alerts()  # every alert so far, over the alert topic's partitions

    # Raised above every score: re-judging would flag nothing, and the stored alerts would be lost.
    alerts = replay_partition_1_with_threshold(values[-1] + 1.0)
    assert sorted(alert["sample_key"] for alert in alerts) == sorted(flagged * 2)
    assert {alert["threshold_id"] for alert in alerts} == {first.id}
    assert all(alert["threshold"] == pytest.approx(cut) for alert in alerts)
    # Lowered below every score: re-judging would flag all six, but only three rows are flagged.
    alerts = replay_partition_1_with_threshold(values[0] - 1.0)
    assert sorted(alert["sample_key"] for alert in alerts) == sorted(flagged * 3)
    assert _count(store, "samples") == 12


def test_a_congested_pipeline_pauses_the_partitions_and_keeps_polling():
    # While the store is down the pipeline fills up. The consume loop must keep polling (so the
    # group keeps the partitions) with the partitions paused, and hand the messages it already
    # holds to the pipeline, in order, once there is room.
    from monitor.stream.daemon import consume
    from monitor.stream.messages import InboundMessage

    class Source:
        def __init__(self):
            self.polls, self.holds = 0, []
            self.queue = [[InboundMessage("t", 0, offset, None, b"x") for offset in (0, 1, 2)]]

        def pause(self, hold):
            self.holds.append(hold)

        def poll(self, timeout_ms, max_records=None):
            self.polls += 1
            return [] if self.holds[-1] or not self.queue else self.queue.pop(0)

    class Head:
        def __init__(self):
            self.taken, self.room = [], 1

        def congested(self):
            return self.room == 0

        def submit(self, message):
            assert self.room > 0, "submitted into a congested pipeline"
            self.taken.append(message.offset)
            self.room -= 1

        def poll(self):
            pass

        def join(self, deadline=None):
            pass

    source, head, shutdown = Source(), Head(), Shutdown()

    def until():
        if source.polls == 5:
            head.room = 10  # the store is back
        return source.polls >= 8

    consume(source, head, shutdown, until=until)
    assert head.taken == [0, 1, 2]
    assert source.holds[:2] == [False, True]  # one message taken, then held with two waiting
    assert source.holds[2:5] == [True, True, True] and source.holds[-1] is False
    assert source.polls >= 8  # polling went on throughout


def _jpeg(side: int, mode: str, seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (2, 2, 3) if mode == "RGB" else (2, 2), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(base, mode).resize((side, side), Image.BILINEAR).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_jpeg_messages_decoded_with_their_batch_end_as_on_the_cpu_path(scorer, tmp_path):
    """The device path's seam, run on the CPU: the same rows, rejects and (within JPEG's rounding)
    scores as the CPU path, for JPEGs mixed with every other kind of message."""
    messages = dict(corpus())
    messages.update({"jpeg-grey": (_jpeg(8, "L", 1), None), "jpeg-rgb-larger": (_jpeg(20, "RGB", 2), None),
                     "jpeg-over-the-byte-limit": (_jpeg(8, "L", 3) + bytes(2000), "too_large")})
    results = {}
    for device_decode in (False, True):
        store = sqlite_store(tmp_path / f"device-{device_decode}.db")
        try:
            harness = Harness(scorer, store, device_decode=device_decode)
            for name, (value, _reason) in messages.items():
                harness.send(value, key=name)
            harness.drain()
            with store.engine.connect() as connection:
                scores = dict(connection.exec_driver_sql("SELECT sample_key, score FROM samples").all())
                reasons = dict(connection.exec_driver_sql("SELECT sample_key, reason FROM rejects").all())
            results[device_decode] = scores, reasons
        finally:
            store.close()
    (cpu_scores, cpu_reasons), (device_scores, device_reasons) = results[False], results[True]
    assert device_reasons == cpu_reasons == {name: reason for name, (_, reason) in messages.items() if reason}
    assert device_scores.keys() == cpu_scores.keys()
    for name, score in cpu_scores.items():
        assert device_scores[name] == pytest.approx(score, rel=0.05, abs=0.05), name
