"""What the service sends out: the Kafka producer (dead letters, alerts) and the alert webhook.

Below both the stream and the scheduled jobs, which publish through it; it knows nothing of either.
"""
