"""Probes, metrics and alert delivery (webhook against a real local HTTP server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from monitor.outbound.alerts import AlertProducer, Webhook
from monitor.stream.local import LocalBroker, LocalProducer
from monitor.stream.messages import InboundMessage
from monitor.service.http import probes_router
from monitor.stream.operability import DaemonState
from monitor.store.records import Policy
from monitor.stream.steps import Batch, Decoded
from tests.services import wait_until


def _client(state: DaemonState) -> TestClient:
    app = FastAPI()
    app.include_router(probes_router(state))
    return TestClient(app)


def test_readyz_lists_what_is_missing_until_the_daemon_can_work():
    state = DaemonState()
    client = _client(state)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["model not loaded yet", "no partitions assigned by the consumer group"]
    state.model_loaded, state.assigned_partitions = True, 2
    assert client.get("/readyz").status_code == 200
    state.store_failed(RuntimeError('connection to server at "db.internal" failed for user "monitor"'))
    body = client.get("/readyz").json()
    # A public endpoint: the kind of failure, not the server's address or user (those go to the log).
    assert body["problems"] == ["database writes failing (RuntimeError; see the daemon's log)"]
    state.store_ok()
    state.stopping = True
    assert client.get("/readyz").json()["problems"] == ["shutting down"]


def test_healthz_fails_only_when_the_loop_stalls_without_reason():
    state = DaemonState(stall_after_s=0.0)
    client = _client(state)
    assert client.get("/healthz").status_code == 200  # starting
    state.polled()
    state.last_poll_at -= 5
    assert client.get("/healthz").status_code == 503
    state.store_failed(RuntimeError("down"))
    assert client.get("/healthz").json()["detail"].startswith("waiting for the database")


def test_metrics_count_images_rejects_flags_and_batch_latency():
    state = DaemonState()
    message = InboundMessage("t", 0, 0, None, b"x")
    batch = Batch(items=[Decoded(message, pixels=1), Decoded(message, pixels=1),
                         Decoded(message, reject_reason="truncated")], opened_at=0.0)
    batch.flagged = np.array([True, False])
    batch.policy = Policy(version=3, model_id=1, indicator="1C-Sum", threshold=1.5)
    state.metrics.observe_batch(batch, replays=1, now=0.25)
    state.lag_value = 17
    text = _client(state).get("/metrics").text
    for line in ("ood_monitor_images_scored_total 2.0", "ood_monitor_images_flagged_total 1.0",
                 'ood_monitor_rejects_total{reason="truncated"} 1.0', "ood_monitor_messages_total 3.0",
                 "ood_monitor_replayed_messages_total 1.0", "ood_monitor_flagged_share 0.5",
                 "ood_monitor_consumer_lag 17.0", "ood_monitor_threshold 1.5",
                 'ood_monitor_batch_seconds_bucket{le="0.25"} 1.0'):
        assert line in text


class _Receiver(BaseHTTPRequestHandler):
    failures_left = 0
    bodies: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
        else:
            type(self).bodies.append((self.headers["content-type"], json.loads(body)))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.failures_left, _Receiver.bodies = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver
    server.shutdown()


def test_webhook_retries_server_errors_then_delivers_once(receiver):
    url, handler = receiver
    handler.failures_left = 2
    results: list[bool] = []
    hook = Webhook(url, retries=3, backoff_s=0.01, timeout_s=2, on_result=results.append)
    hook.post({"kind": "flagged_sample", "sample_key": "a"})
    wait_until(lambda: results, 10, "the webhook delivery")
    hook.close()
    assert results == [True]
    assert handler.bodies == [("application/json", {"kind": "flagged_sample", "sample_key": "a"})]


def test_webhook_gives_up_after_its_retries(receiver):
    url, handler = receiver
    handler.failures_left = 10
    results: list[bool] = []
    hook = Webhook(url, retries=1, backoff_s=0.01, timeout_s=2, on_result=results.append)
    hook.post({"kind": "drift"})
    wait_until(lambda: results, 10, "the webhook to give up")
    hook.close()
    assert results == [False] and handler.failures_left == 8 and handler.bodies == []


def test_job_alerts_go_to_the_alerts_topic_and_the_webhook(receiver):
    url, handler = receiver
    broker = LocalBroker()
    hook = Webhook(url, retries=0, backoff_s=0.01)
    alerts = AlertProducer(LocalProducer(broker), "alerts", hook)
    alerts.publish_alert("drift", {"schema_version": 1, "kind": "drift", "indicators": ["ANG"]})
    wait_until(lambda: handler.bodies, 10, "the webhook delivery")
    alerts.close()
    [record] = broker.records("alerts")
    assert json.loads(record.value)["kind"] == "drift" and record.key == b"drift"
    assert handler.bodies[0][1]["indicators"] == ["ANG"]


def test_probes_answer_head_as_get_without_a_body():
    # Load balancers and uptime checks often probe with HEAD.
    from monitor.service.http import build_http_app

    state = DaemonState()
    app, with_web = build_http_app(state)
    assert not with_web
    client = TestClient(app)
    for path in ("/healthz", "/readyz", "/metrics"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, path
        assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"], path
    assert client.head("/nowhere").status_code == 404
