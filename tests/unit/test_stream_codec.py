"""The message codec and the small steps, each alone: what a consumer of our topics relies on."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest

from monitor.settings import settings_from_mapping
from monitor.outbound.kafka import client_options
from monitor.stream.messages import (
    InboundMessage,
    dead_letter_document,
    encode_json,
    guess_content_type,
    next_offsets,
    original_value,
)
from monitor.stream.produce import iter_files
from monitor.stream.steps import Batch, BatchStep, Decoded, keeps_image
from monitor.errors import InputError


def _message(**overrides) -> InboundMessage:
    fields = dict(topic="images", partition=2, offset=41, key=b"cam-7/0001", value=b"\x89PNG\r\n\x1a\nrest")
    fields.update(overrides)
    return InboundMessage(**fields)


def test_sample_key_is_the_message_key_else_the_position():
    assert _message().sample_key == "cam-7/0001"
    assert _message(key=None).sample_key == "images/2/41"
    assert _message(key=b"").sample_key == "images/2/41"
    assert _message(key=b"\xff\xfeid").sample_key == "\\xff\\xfeid"  # undecodable bytes stay visible


def test_content_type_header_is_optional_and_case_insensitive():
    assert _message().content_type is None  # brokers before 0.11 carry no headers
    assert _message(headers=(("Content-Type", b"Image/PNG"),)).content_type == "image/png"


def test_producer_timestamp_becomes_produced_at_when_present():
    assert _message().produced_at is None
    assert _message(timestamp_ms=-1).produced_at is None  # what 0.9 brokers report
    assert _message(timestamp_ms=1_700_000_000_000).produced_at.year == 2023


def test_dead_letter_carries_reason_source_and_original_bytes():
    message = _message(headers=(("trace", b"abc"),))
    document = json.loads(encode_json(dead_letter_document(message, "corrupt", "bad CRC", group_id="g")))
    assert document["kind"] == "dead_letter" and document["schema_version"] == 1
    assert (document["reason"], document["detail"], document["group_id"]) == ("corrupt", "bad CRC", "g")
    assert document["source"] == {"topic": "images", "partition": 2, "offset": 41, "timestamp_ms": None}
    assert original_value(document) == message.value
    assert base64.b64decode(document["key_base64"]) == message.key
    assert document["headers"] == [{"key": "trace", "value_base64": base64.b64encode(b"abc").decode()}]
    assert document["size"] == len(message.value) and not document["value_truncated"]
    assert document["rejected_at"].endswith("Z")


def test_dead_letter_leaves_out_values_too_large_for_one_broker_message():
    big = _message(value=b"x" * 2000)
    document = dead_letter_document(big, "too_large", "2000 bytes", group_id="g", max_value_bytes=1000)
    assert document["value_base64"] is None and document["value_truncated"] is True
    assert document["size"] == 2000 and len(document["sha256"]) == 64
    assert original_value(document) is None


def test_next_offsets_commit_after_the_highest_offset_per_partition():
    positions = [("a", 0, 5), ("a", 0, 3), ("a", 1, 0), ("b", 0, 9)]
    assert next_offsets(positions) == {("a", 0): 6, ("a", 1): 1, ("b", 0): 10}


def test_content_type_from_magic_bytes():
    assert guess_content_type(b"\x89PNG\r\n\x1a\n...") == "image/png"
    assert guess_content_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert guess_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert guess_content_type(b"\x93NUMPY\x01\x00") == "application/x-npy"
    assert guess_content_type(b"hello") is None


def test_batch_leaves_when_full_or_when_its_oldest_message_waited_long_enough():
    now = [0.0]
    out: list[Batch] = []
    sink = SimpleNamespace(submit=out.append, poll=lambda: None, join=lambda deadline=None: None,
                           congested=lambda: False)
    step = BatchStep(sink, batch_size=3, max_wait_s=0.5, clock=lambda: now[0])
    for offset in range(4):
        step.submit(Decoded(_message(offset=offset)))
    assert [len(batch.items) for batch in out] == [3]  # full batch left at once
    now[0] = 0.4
    step.poll()
    assert len(out) == 1  # the partial batch has waited 0.4 s < 0.5 s
    now[0] = 0.6
    step.poll()
    assert [len(batch.items) for batch in out] == [3, 1]
    step.submit(Decoded(_message(offset=9)))
    step.join()
    assert [len(batch.items) for batch in out] == [3, 1, 1]


def test_a_waiting_batch_stays_while_the_next_step_is_congested():
    now, busy = [0.0], [True]
    out: list[Batch] = []
    sink = SimpleNamespace(submit=out.append, poll=lambda: None, join=lambda deadline=None: None,
                           congested=lambda: busy[0])
    step = BatchStep(sink, batch_size=3, max_wait_s=0.5, clock=lambda: now[0])
    step.submit(Decoded(_message(offset=0)))
    assert step.congested()  # the next item could complete a batch the next step cannot take
    now[0] = 1.0
    step.poll()
    assert out == []  # overdue, but leaving now would block the caller
    busy[0] = False
    step.poll()
    assert [len(batch.items) for batch in out] == [1]


def test_kept_image_share_is_stable_across_replays_and_close_to_the_setting():
    positions = [("images", p, o) for p in range(3) for o in range(2000)]
    kept = [keeps_image(position, 0.1) for position in positions]
    assert kept == [keeps_image(position, 0.1) for position in positions]
    assert 0.08 < sum(kept) / len(kept) < 0.12
    assert not any(keeps_image(position, 0.0) for position in positions[:100])


def test_kafka_client_options_follow_the_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    settings = settings_from_mapping({"kafka": {
        "bootstrap_servers": ["a:9093", "b:9093"], "api_version": "0.9", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "u", "sasl_plain_password": "p",
        "ssl_cafile": str(ca)}})
    options = client_options(settings.kafka)
    assert options["api_version"] == (0, 9) and options["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["ssl_cafile"] == str(ca) and options["ssl_check_hostname"] is True
    assert "api_version" not in client_options(settings_from_mapping({}).kafka)  # auto: probe the broker


def test_produce_walks_folders_recursively_and_skips_hidden_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.png").write_bytes(b"1")
    (tmp_path / "a" / "b" / "two.jpg").write_bytes(b"2")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"3")
    single = tmp_path / "three.npy"
    single.write_bytes(b"4")
    found = [path.relative_to(tmp_path).as_posix() for path in iter_files([tmp_path / "a", single])]
    assert found == ["a/b/two.jpg", "a/one.png", "three.npy"]
    with pytest.raises(InputError, match="no such file or folder"):
        list(iter_files([tmp_path / "missing"]))


def test_record_checksums_are_computed_by_the_c_implementation():
    # kafka-python validates the CRC32C of every fetched record batch; in pure Python that
    # costs about 16 ms per 100 KB image, a ceiling of a few dozen messages/s per daemon.
    from kafka.record import util

    assert util.crc32c_c is not None, "the crc32c package is missing: record checksums run in Python"
    data = bytes(range(256)) * 400
    assert util.calc_crc32c(data) == util.crc32c_py(data)
