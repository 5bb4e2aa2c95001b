"""The stream's commands through the real command line: clear errors, the offline demo kept, JSON logs."""

from __future__ import annotations

import json
import logging

from monitor.cli import main
from monitor.settings import settings_from_mapping
from monitor.stream.daemon import JsonLogFormatter, configure_logging


def test_run_with_a_missing_config_file_says_so(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "--config: no such file" in capsys.readouterr().err


def test_run_with_an_invalid_setting_names_the_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[stream]\nbatch_sise = 8\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "unknown key [stream] batch_sise (did you mean batch_size?)" in capsys.readouterr().err


def test_run_refuses_a_negative_or_non_numeric_worker_count(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[stream]\nworkers = -2\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "[stream] workers: -2 is below the minimum 0" in capsys.readouterr().err
    for value in ("-1", "two"):
        try:
            code = main(["run", "--workers", value])
        except SystemExit as exited:  # argparse's own exit
            code = exited.code
        assert code == 2
        assert f"--workers: expected 0 or a positive integer, not '{value}'" in capsys.readouterr().err


def test_produce_refuses_a_missing_path(tmp_path, capsys):
    code = main(["produce", str(tmp_path / "nothing-here"), "--topic", "t", "--bootstrap-servers", "127.0.0.1:9"])
    assert code == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_demo_offline_still_ranks_the_bundled_samples(tmp_path, capsys):
    code = main(["demo", "--offline", "--cache-dir", str(tmp_path), "--calibration-samples", "64", "--no-progress",
                 "--device", "cpu"])
    assert code == 0
    assert "40 bundled images" in capsys.readouterr().out


def test_json_logs_are_one_object_per_line(capsys):
    root = logging.getLogger()
    saved = [(handler, handler.formatter) for handler in root.handlers], root.level
    try:
        configure_logging(settings_from_mapping({"logging": {"format": "json"}}).logging)
        assert all(isinstance(handler.formatter, JsonLogFormatter) for handler in root.handlers)
        record = logging.LogRecord("monitor.stream", logging.WARNING, __file__, 1, "lag is %d", (42,), None)
        document = json.loads(JsonLogFormatter().format(record))
        assert document["level"] == "WARNING" and document["message"] == "lag is 42"
        assert document["logger"] == "monitor.stream" and document["time"].endswith("Z")
    finally:
        for handler, formatter in saved[0]:
            handler.setFormatter(formatter)
        root.setLevel(saved[1])
