"""The Prometheus alerting rules and the Grafana dashboard that ship with the deployment files.

The rules are checked and unit-tested by Prometheus's own `promtool` (Debian's `prometheus` package,
installed by `deploy/local/bootstrap.sh --test`) on the series a scoring process exports; the rules
and the dashboard may name only metrics the code exports, read from a real metrics registry's
exposition text, and the expected flagged share of the rules is the one of the shipped configurations.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.unit.deploy_files import (
    COMPOSE, KUBERNETES, OBSERVABILITY, exported_metric_names, metric_names_in, render, settings_of,
)

ALERTS = OBSERVABILITY / "alerts.yaml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise AssertionError("promtool is needed (Debian: apt-get install prometheus; deploy/local/bootstrap.sh "
                             "--test installs it as root)")
    return found


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_alerting_rules_are_valid_for_prometheus(promtool):
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerting_rules_pass_their_unit_tests(promtool):
    result = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
                            timeout=120, cwd=OBSERVABILITY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fail_when_an_alert_misbehaves(promtool, tmp_path):
    """The unit tests can fail: with the reject alert's limit raised they no longer pass."""
    (tmp_path / "alerts.yaml").write_text(ALERTS.read_text().replace(
        "ood_monitor:reject_share:ratio_rate10m > 0.05", "ood_monitor:reject_share:ratio_rate10m > 0.5"))
    (tmp_path / "alerts.test.yaml").write_text(ALERT_TESTS.read_text())
    result = subprocess.run([promtool, "test", "rules", "alerts.test.yaml"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 1 and "OodMonitorRejectRateHigh" in result.stdout + result.stderr


def test_every_alert_the_deployment_needs_is_there_and_unit_tested():
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {"OodMonitorConsumerLagGrowing", "OodMonitorRejectRateHigh", "OodMonitorFlaggedShareFarFromExpected",
            "OodMonitorNothingStored", "OodMonitorJobFailed", "OodMonitorWorkersRestarting"} <= alerts
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert tested == alerts, f"alerts without a promtool test: {sorted(alerts - tested)}"
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_name_only_metrics_the_code_exports():
    exported = exported_metric_names()
    assert "ood_monitor_messages_total" in exported and "ood_monitor_batch_seconds_bucket" in exported
    for rule in rules():
        unknown = metric_names_in(rule["expr"]) - exported
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)} not exported by the code"


def test_test_series_name_only_metrics_the_code_exports():
    exported = exported_metric_names()
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{")[0]
            assert name in exported, f"alerts.test.yaml feeds {name}, which no process exports"


def test_dashboard_names_only_exported_metrics_and_recorded_series():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_metric_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 10
    for expression in expressions:
        unknown = metric_names_in(expression) - exported
        assert not unknown, f"dashboard query {expression!r} names {sorted(unknown)}, not exported by the code"
        for name in set(re.findall(r"\bood_monitor:[a-z0-9_:]+", expression)):
            assert name in recorded, f"dashboard query {expression!r} reads {name}, which no rule records"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])


def test_dashboard_checks_would_catch_an_unknown_metric():
    assert metric_names_in("sum(rate(ood_monitor_images_scored_totl[5m]))") - exported_metric_names() == {
        "ood_monitor_images_scored_totl"}


def test_expected_flagged_share_of_the_rules_is_the_configured_one():
    (rule,) = [rule for rule in rules() if rule.get("record") == "ood_monitor:expected_flagged_share"]
    expected = float(rule["expr"].removeprefix("vector(").removesuffix(")"))
    compose_settings = settings_of((COMPOSE.parent / "compose" / "monitor.toml").read_text())
    assert compose_settings.jobs.expected_share == expected
    (config_map,) = [d for d in render(KUBERNETES / "overlays" / "cpu") if d["kind"] == "ConfigMap"]
    assert settings_of(config_map["data"]["monitor.toml"]).jobs.expected_share == expected
