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
ATTACHMENTS_REMOVED = Counter(
    "chat_history_attachments_removed_total",
    "Attachments whose objects and rows were removed: reason deleted (their message) or"
    " expired (never sent within CHAT_ATTACHMENT_UNATTACHED_TTL)", ["reason"])
ERASE_ERRORS = Counter(
    "chat_history_stream_erase_errors_total",
    "Stream erasures of deleted messages that failed (the text stays in the stream)",
)
ACK_FLOOR = Gauge(
    "chat_history_ack_floor",
    "Stream sequence up to which every message is stored (last polled ack floor)",
    ["stream"],
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

# --- the CHAT stream and this service's consumer (polled by .stream_monitor) -----
# Every instance exports the same values: aggregate with max by (stream).
STREAM_MESSAGES = Gauge("chat_stream_messages", "Messages the stream holds now", ["stream"])
STREAM_BYTES = Gauge("chat_stream_bytes", "Bytes the stream holds now (one replica)",
                     ["stream"])
STREAM_MAX_BYTES = Gauge(
    "chat_stream_max_bytes",
    "The live stream's max_bytes (0: no size limit); past it the oldest messages are dropped",
    ["stream"])
STREAM_MAX_AGE = Gauge(
    "chat_stream_max_age_seconds",
    "The live stream's max_age (0: no age limit); older messages are dropped", ["stream"])
STREAM_FIRST_SEQ = Gauge(
    "chat_stream_first_seq",
    "Oldest sequence still in the stream: readers go to history-service below it",
    ["stream"])
STREAM_WINDOW = Gauge(
    "chat_stream_window_seconds",
    "Age of the oldest message still in the stream: the window it holds now (max_age, "
    "or less once max_bytes bounds it)", ["stream"])
STREAM_LAST_SEQ = Gauge("chat_stream_last_seq", "Newest sequence in the stream", ["stream"])
STREAM_REPLICAS = Gauge("chat_stream_replicas", "num_replicas of the live stream", ["stream"])
STREAM_LEADER = Gauge(
    "chat_stream_leader", "1 while the stream has a leader (0: no quorum, sends fail)",
    ["stream"])
STREAM_PEERS = Gauge(
    "chat_stream_cluster_replicas",
    "Followers of the stream by state: current, lagging (not caught up) or offline "
    "(unreachable: a NATS node or the route to it is down)",
    ["stream", "state"])
CONSUMER_PENDING = Gauge(
    "chat_history_consumer_pending",
    "Stream messages not yet delivered to history-service (num_pending)", ["stream"])
CONSUMER_ACK_PENDING = Gauge(
    "chat_history_consumer_ack_pending",
    "Messages delivered to history-service and not yet stored and acked", ["stream"])
CONSUMER_LAG = Gauge(
    "chat_history_consumer_lag_seconds",
    "Age of the oldest stream message not yet stored (0 when all are): compare with "
    "chat_stream_max_age_seconds; past it unstored messages are dropped", ["stream"])
MONITOR_ERRORS = Counter(
    "chat_stream_monitor_errors_total",
    "Polls of stream or consumer info that failed (the gauges keep their last values)")

# --- refusals (capacity, rate limits, quotas) --------------------------------------
REFUSED = Counter(
    "chat_history_refused_total",
    "Requests refused by a limit: search_rate, search_busy, search_timeout, room_rate, "
    "room_quota",
    ["reason"])
ERASE_PENDING = Gauge(
    "chat_history_stream_erase_pending",
    "Deleted messages whose stream copies are still to be erased (history.erasures)")
