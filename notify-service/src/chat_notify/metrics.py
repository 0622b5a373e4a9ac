"""notify-service's metrics (README "Metrics"); the kit's own are in chat_kit.metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SENT = Counter("chat_notify_sent_total", "Webhooks the receiver accepted (2xx)", ["type"])
FAILED = Counter("chat_notify_failed_total",
                 "Notifications that failed for good (then dead-lettered)", ["reason"])
DEAD_LETTERED = Counter("chat_notify_dead_lettered_total",
                        "Notifications published to the dead-letter stream NOTIFY_DEAD")
SKIPPED = Counter("chat_notify_skipped_total",
                  "Would-be notifications not sent: online, level, blocked, unknown_user, "
                  "stale, disabled", ["reason"])
ATTEMPTS = Counter("chat_notify_attempts_total", "Webhook POSTs, by outcome",
                   ["outcome"])  # delivered, retry, refused
RECORDS = Counter("chat_notify_records_total", "Chat records taken from the stream, by outcome",
                  ["outcome"])  # done, retried (nak: a service or the database away)
LATENCY = Histogram(
    "chat_notify_delivery_seconds",
    "From the message's store in the stream to the receiver's 2xx (retries included)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
