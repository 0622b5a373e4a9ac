"""Prometheus metrics of the history service (served by chat_kit's /metrics).

Request counts and latency of the endpoint come from chat_kit's
``chat_service_*`` metrics with ``service="history"``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STORED = Counter(
    "chat_history_messages_stored_total",
    "Rows inserted into history.messages (redeliveries and duplicates excluded)",
)
BAD_RECORDS = Counter(
    "chat_history_bad_records_total",
    "Stream messages that can never be stored, terminated so they do not block the stream",
    ["reason"],
)
BATCH_SECONDS = Histogram(
    "chat_history_batch_seconds",
    "Time to insert and commit one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "chat_history_batch_size",
    "Messages per inserted batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
DROPPED = Counter(
    "chat_history_deliveries_dropped_total",
    "Deliveries left unacked because the buffer was full (redelivered after ack_wait)",
)
DB_ERRORS = Counter(
    "chat_history_db_errors_total",
    "Batch inserts that failed and will be retried (the batch stays unacked)",
)
CONSUMER_ERRORS = Counter(
    "chat_history_consumer_errors_total",
    "Setup or check failures of the durable consumer (a missing one is re-created)",
)
ERASED = Counter(
    "chat_history_stream_erased_total",
    "CHAT stream messages erased because their message was deleted (original and edits)",
)
ERASE_ERRORS = Counter(
    "chat_history_stream_erase_errors_total",
    "Stream erasures of deleted messages that failed (the text stays in the stream)",
)
ACK_FLOOR = Gauge(
    "chat_history_ack_floor",
    "Stream sequence up to which every message is stored (last polled ack floor)",
)
CATCHUP_SECONDS = Histogram(
    "chat_history_catchup_wait_seconds",
    "Time a read waited for the consumer to store what it must include",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CATCHUP_TIMEOUTS = Counter(
    "chat_history_catchup_timeouts_total",
    "Reads answered unavailable because storage did not catch up in time",
)
