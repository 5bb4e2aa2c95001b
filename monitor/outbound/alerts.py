"""Alert delivery, shared by the stream and the scheduled jobs: JSON on the alerts topic, and an
optional webhook.

`AlertProducer.publish_alert(kind, payload)` is what the scheduled jobs call (monitor.jobs.alerts)
and what the stream uses for flagged samples' webhooks; `KafkaAlertPublisher` is the same for a
process that has no producer of its own yet (the scheduler, `refit`, `report`). The webhook runs on its own thread with
retries and a doubling backoff, so a slow or dead endpoint never holds up scoring; after the last
retry the alert is logged as undelivered (the alerts topic, and the alerts table for job alerts,
still have it).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable


log = logging.getLogger(__name__)

def encode_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")


def message_key(document: dict[str, Any]) -> bytes:
    """Key of an outbound message: the sample key keeps one sample's messages on one partition."""
    return str(document.get("sample_key") or document.get("kind")).encode("utf-8")


WEBHOOK_QUEUE_SIZE = 10_000


class Webhook:
    """POST each alert as JSON to `url`; retry failures (network errors, 5xx, 429) `retries` times."""

    def __init__(self, url: str, *, retries: int = 3, timeout_s: float = 5.0, backoff_s: float = 0.5,
                 on_result: Callable[[bool], None] | None = None):
        import httpx

        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.on_result = on_result
        self.client = httpx.Client(timeout=timeout_s, headers={"user-agent": "ood-monitor"})
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(WEBHOOK_QUEUE_SIZE)
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self.thread.start()

    def post(self, document: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(document)
        except queue.Full:
            log.error("webhook queue full (%d alerts waiting): alert %s for %s not sent to the webhook",
                      WEBHOOK_QUEUE_SIZE, document.get("kind"), document.get("sample_key"))

    def _deliver(self, document: dict[str, Any]) -> bool:
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                response = self.client.post(self.url, content=encode_json(document),
                                            headers={"content-type": "application/json"})
                if response.status_code < 300:
                    return True
                retryable = response.status_code >= 500 or response.status_code == 429
                problem = f"HTTP {response.status_code}"
            except Exception as error:  # noqa: BLE001 - any transport error is retried
                retryable, problem = True, repr(error)
            if not retryable or attempt == self.retries:
                log.error("webhook %s: alert %s not delivered after %d attempt(s): %s", self.url,
                          document.get("kind"), attempt + 1, problem)
                return False
            log.warning("webhook %s: %s, retrying in %.1f s", self.url, problem, wait)
            if self._stopped.wait(wait):
                return False
            wait *= 2
        return False

    def _run(self) -> None:
        while True:
            document = self.queue.get()
            if document is None:
                return
            delivered = self._deliver(document)
            if self.on_result:
                self.on_result(delivered)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to `timeout` seconds in all, then stop: alerts still queued
        then are not sent to the webhook (the alerts topic has them)."""
        deadline = time.monotonic() + timeout
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self.thread.join(max(0.0, deadline - time.monotonic()))
        self._stopped.set()
        self.client.close()


class AlertProducer:
    """Publishes alert documents: the alerts topic (acknowledged before returning) and the webhook."""

    def __init__(self, producer: Any, topic: str | None, webhook: Webhook | None = None,
                 send_timeout_s: float = 30.0):
        self.producer = producer
        self.topic = topic
        self.webhook = webhook
        self.send_timeout_s = send_timeout_s

    def publish_alert(self, kind: str, payload: dict[str, Any]) -> None:
        document = payload if payload.get("kind") == kind else {**payload, "kind": kind}
        if self.topic is not None:
            future = self.producer.send(self.topic, encode_json(document), key=message_key(document))
            future.get(timeout=self.send_timeout_s)
        if self.webhook is not None:
            self.webhook.post(document)

    def to_webhook(self, document: dict[str, Any]) -> None:
        """For alerts already on the topic (flagged samples, published with their batch)."""
        if self.webhook is not None:
            self.webhook.post(document)

    def close(self, timeout_s: float = 5.0) -> None:
        if self.webhook is not None:
            self.webhook.close(timeout_s)


def alerts_publisher(settings: Any) -> "KafkaAlertPublisher":
    """The alerts topic (and webhook) publisher for the standalone commands."""
    return KafkaAlertPublisher(settings)


class KafkaAlertPublisher:
    """Publishes job alerts on [kafka] alerts_topic (and the [alerts] webhook).

    The Kafka producer is created on the first alert: most runs raise none, and a command
    should not wait for a broker it does not need. If the broker cannot be reached the error
    propagates to AlertSink, which logs it and leaves the stored alert unpublished.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        alerts = settings.alerts
        self.webhook = (Webhook(alerts.webhook_url, retries=alerts.webhook_retries,
                                timeout_s=alerts.webhook_timeout_s, backoff_s=alerts.webhook_backoff_s)
                        if alerts.webhook_url else None)
        self.producer: Any = None
        self.inner: Any = None

    def _topic_publisher(self):
        if self.inner is None:
            from monitor.outbound.kafka import make_producer

            kafka = self.settings.kafka
            self.producer = make_producer(kafka, client_id=f"{kafka.client_id}-jobs")
            self.inner = AlertProducer(self.producer, self.settings.kafka.alerts_topic)
        return self.inner

    def publish_alert(self, kind: str, payload: dict[str, Any]) -> None:
        if self.webhook is not None:  # first, so that a dead broker does not keep it from the webhook
            self.webhook.post({**payload, "kind": kind})
        self._topic_publisher().publish_alert(kind, payload)

    def close(self, timeout_s: float = 5.0) -> None:
        if self.webhook is not None:
            self.webhook.close(timeout_s)
        if self.producer is not None:
            self.producer.close(timeout=10)
