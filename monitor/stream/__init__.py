"""The streaming daemon: Kafka consumer, message codec, processing steps, dead-letter and alert
producers, operability probes. `ood-monitor run` starts it; see docs/daemon.md."""
