"""The configuration a user writes: file + environment, checked at the boundary with clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from monitor.errors import ConfigError
from monitor.settings import documented_settings, load_settings, settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_without_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no config/monitor.toml here
    settings = load_settings(environ={})
    assert settings.source is None
    assert settings.store.url == "sqlite:///var/ood-monitor.db"
    assert settings.kafka.topics == ["images"]
    assert settings.stream.indicator == "1C-Sum"
    assert settings.kafka.api_version_tuple() is None


def test_bundled_config_file_loads_and_matches_the_defaults(monkeypatch):
    monkeypatch.chdir(ROOT)
    from_file = load_settings(environ={})
    assert from_file.source == "config/monitor.toml"
    assert from_file.redacted() == settings_from_mapping({}).redacted()


def test_production_example_is_valid_apart_from_its_certificate_path(tmp_path):
    data = tomllib.loads((ROOT / "config/production.example.toml").read_text())
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    data["kafka"]["ssl_cafile"] = str(ca)
    settings = settings_from_mapping(data, {"MONITOR_KAFKA__SASL_PLAIN_PASSWORD": "s3cret"})
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.redacted()["kafka"]["sasl_plain_password"] == "***"
    assert "s3cret" not in repr(settings.redacted())


def test_file_values_and_environment_overrides_parsed_to_the_field_type(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text('[kafka]\ntopics = "a"\napi_version = "0.9"\n[stream]\nbatch_size = 8\n')
    settings = load_settings(config, environ={
        "MONITOR_KAFKA__BOOTSTRAP_SERVERS": "h1:9092, h2:9093",
        "MONITOR_STREAM__BATCH_SIZE": "16",
        "MONITOR_STREAM__DEFAULT_THRESHOLD": "2.5",
        "MONITOR_MODEL__ODIN": "yes",
        "MONITOR_MODEL__WEIGHTS": "",
        "MONITOR_FASHION_MNIST_DIR": "/not/a/setting",  # no '__': ignored
    })
    assert settings.kafka.topics == ["a"]
    assert settings.kafka.api_version_tuple() == (0, 9)
    assert settings.kafka.bootstrap_servers == ["h1:9092", "h2:9093"]
    assert settings.stream.batch_size == 16  # environment wins over the file
    assert settings.stream.default_threshold == 2.5
    assert settings.model.odin is True
    assert settings.model.weights is None


def test_config_path_from_environment_variable(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text('[kafka]\ngroup_id = "scorers"\n')
    assert load_settings(environ={"MONITOR_CONFIG": str(config)}).kafka.group_id == "scorers"


def _error(data=None, environ=None) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(data or {}, environ or {}, source="m.toml")
    return str(caught.value)


def test_unknown_key_suggests_the_right_one():
    message = _error({"kafka": {"bootstrap_server": "x:1"}})
    assert "unknown key [kafka] bootstrap_server (did you mean bootstrap_servers?)" in message
    assert "m.toml" in message


def test_unknown_section_and_unknown_environment_key():
    assert "unknown section [kafak] (did you mean kafka?)" in _error({"kafak": {}})
    message = _error(environ={"MONITOR_STREAM__BATCHSIZE": "3"})
    assert "unknown key [stream] batchsize (did you mean batch_size?)" in message
    assert "$MONITOR_STREAM__BATCHSIZE" in message


@pytest.mark.parametrize("data, expected", [
    ({"stream": {"batch_size": "64"}}, "[stream] batch_size: expected an integer, got '64'"),
    ({"stream": {"batch_size": 2.5}}, "[stream] batch_size: expected an integer, got 2.5"),
    ({"model": {"odin": "true"}}, "[model] odin: expected a boolean (true/false), got 'true'"),
    ({"kafka": {"topics": [1, 2]}}, "[kafka] topics: expected a list of strings, got [1, 2]"),
    ({"stream": {"decode_threads": -1}}, "[stream] decode_threads: -1 is below the minimum 0"),
    ({"store": {"keep_image_share": 1.5}}, "[store] keep_image_share: 1.5 is above the maximum 1.0"),
    ({"model": {"device": "gpu"}}, "[model] device: 'gpu' is not one of auto, cpu, cuda"),
    ({"stream": {"indicator": "ang++"}}, "[stream] indicator: 'ang++' is not one of MP, H"),
    ({"kafka": {"topics": []}}, "[kafka] topics: must not be empty"),
    ({"stream": {"workers": -1}}, "[stream] workers: -1 is below the minimum 0"),
    ({"stream": {"workers": 257}}, "[stream] workers: 257 is above the maximum 256"),
    ({"stream": {"workers": "auto"}}, "[stream] workers: expected an integer, got 'auto'"),
    ({"stream": {"workers": 1.5}}, "[stream] workers: expected an integer, got 1.5"),
])
def test_wrong_type_or_range_names_key_and_problem(data, expected):
    assert expected in _error(data)


def test_workers_from_the_environment_is_checked_like_the_file():
    assert "[stream] workers: expected an integer, got 'two' (from $MONITOR_STREAM__WORKERS)" in _error(
        environ={"MONITOR_STREAM__WORKERS": "two"})
    assert "[stream] workers: -3 is below the minimum 0" in _error(environ={"MONITOR_STREAM__WORKERS": "-3"})


def test_environment_value_of_wrong_type():
    message = _error(environ={"MONITOR_WEB__PORT": "eighty"})
    assert "[web] port: expected an integer, got 'eighty' (from $MONITOR_WEB__PORT)" in message


def test_every_problem_is_reported_at_once():
    message = _error({"stream": {"batch_size": 0, "decode_threads": "x"}, "nope": {}})
    assert message.count("\n") == 3


@pytest.mark.parametrize("kafka, expected", [
    ({"security_protocol": "SASL_SSL"}, "sasl_mechanism: required when security_protocol is SASL_SSL"),
    ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism: set, but security_protocol is PLAINTEXT"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "both are required"),
    ({"ssl_cafile": "/no/such/ca.pem"}, "[kafka] ssl_cafile: no such file /no/such/ca.pem"),
    ({"api_version": "zero.nine"}, "[kafka] api_version: 'zero.nine' is not 'auto' nor a version"),
    ({"topics": ["images", "images.dead-letter"]}, "would consume its own output"),
])
def test_rules_across_keys(kafka, expected):
    assert expected in _error({"kafka": kafka})


def test_bad_toml_and_missing_explicit_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})
    with pytest.raises(ConfigError, match="--config: no such file"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_every_setting_is_documented_in_the_config_file_and_the_docs():
    config_text = (ROOT / "config/monitor.toml").read_text()
    docs_text = (ROOT / "docs/configuration.md").read_text()
    for section, key, _default, doc in documented_settings():
        assert doc, f"[{section}] {key} has no documentation string"
        assert f"[{section}]" in config_text and key in config_text, f"[{section}] {key} missing from config/monitor.toml"
        assert f"`{key}`" in docs_text, f"[{section}] {key} missing from docs/configuration.md"


def test_model_preprocessing_lists_from_file_and_environment():
    settings = settings_from_mapping(
        {"model": {"input_shape": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                   "head": "classifier.1"}},
        environ={"MONITOR_MODEL__MEAN": "0.4, 0.45, 0.5"},
    )
    assert settings.model.input_shape == [3, 32, 32]
    assert settings.model.mean == [0.4, 0.45, 0.5] and settings.model.std == [0.25, 0.25, 0.25]
    assert settings.model.head == "classifier.1"


@pytest.mark.parametrize("model, expected", [
    ({"input_shape": [3, 32]}, "[model] input_shape: [3, 32] is not [C, H, W]"),
    ({"input_shape": [1, 28, 28], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
     "[model] mean: has 3 values but input_shape has 1 channels"),
    ({"mean": [0.5], "std": [0.0]}, "[model] std: [0.0] has a value <= 0"),
    ({"mean": [0.5]}, "[model] mean / std: give both or neither"),
    ({"input_shape": [1, "28", 28]}, "[model] input_shape: expected a list of integers or none"),
    ({"input_shape": [0, 28, 28]}, "[model] input_shape: 0 is below the minimum 1"),
])
def test_model_preprocessing_rules_name_the_key(model, expected):
    assert expected in _error({"model": model})


def test_the_config_file_names_the_real_reject_reason_codes():
    import re

    from monitor.imaging import REJECT_REASONS

    named = re.findall(r'rejected as "([^"]+)"', (ROOT / "config/monitor.toml").read_text())
    assert {"too_large", "too_many_pixels"} <= set(named)  # the [imaging] limits say what they reject as
    assert set(named) <= set(REJECT_REASONS), f"not reason codes: {set(named) - set(REJECT_REASONS)}"
