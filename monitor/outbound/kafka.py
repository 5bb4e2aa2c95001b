"""kafka-python clients built from [kafka] settings: the options every client shares, reaching the
brokers at start-up, and the outbound producer (acks=all) that the stream (dead letters, alerts) and
the scheduled jobs (alerts) publish with."""

from __future__ import annotations

import logging
from typing import Any

from monitor.errors import ConfigError, MonitorError

log = logging.getLogger(__name__)


def client_options(kafka: Any) -> dict[str, Any]:
    """Options every kafka-python client shares, from a KafkaSettings."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(kafka.bootstrap_servers),
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        # How long a client waits for the cluster's metadata at start: past it, an error, not a hang.
        "bootstrap_timeout_ms": kafka.connect_timeout_ms,
    }
    version = kafka.api_version_tuple()
    if version is not None:
        options["api_version"] = version
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "sasl_mechanism",
                "sasl_plain_username", "sasl_plain_password"):
        value = getattr(kafka, key)
        if value is not None:
            options[key] = value
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = kafka.ssl_check_hostname
    return options


def unreachable(kafka: Any, error: Exception) -> MonitorError:
    return MonitorError(f"cannot reach the Kafka brokers {', '.join(kafka.bootstrap_servers)} within "
                        f"{kafka.connect_timeout_ms / 1000:g} s ([kafka] bootstrap_servers, connect_timeout_ms, "
                        f"api_version={kafka.api_version}, security_protocol={kafka.security_protocol}): {error}")


def reach_brokers(kafka: Any) -> None:
    """Connect to the brokers and read the cluster's metadata within [kafka] connect_timeout_ms, or
    raise a MonitorError naming them (with a pinned api_version the clients would not try before
    their first request, and then retry without end)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    client_log = logging.getLogger("kafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # each failed attempt would log; the error below says it once
    try:
        client = KafkaConsumer(**client_options(kafka))
        try:
            client.bootstrap(timeout_ms=kafka.connect_timeout_ms)
        finally:
            client.close()
    except KafkaError as error:
        raise unreachable(kafka, error) from None
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(f"[kafka]: the Kafka client refused the settings: {error}") from None
    finally:
        client_log.setLevel(level)


def make_producer(kafka: Any, **overrides: Any):
    """A producer that waits for every in-sync replica (acks=all) and retries transient errors."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    options = client_options(kafka)
    options.update(acks="all", retries=5, linger_ms=5, request_timeout_ms=kafka.request_timeout_ms,
                   max_block_ms=max(kafka.request_timeout_ms, 10000))
    version = kafka.api_version_tuple()
    if version is not None and version < (0, 11):
        options["enable_idempotence"] = False  # brokers before 0.11 cannot; say so instead of a warning
    options.update(overrides)
    try:
        return KafkaProducer(**options)
    except KafkaError as error:
        raise unreachable(kafka, error) from None
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(f"[kafka]: the Kafka client refused the settings: {error}") from None
