"""Prometheus metrics shared by every process (names: docs/protocol.md §7).

Gateway-only metrics live here too so that one registry serves ``/metrics``
and dashboards find every name in one place.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

NATS_CONNECTED = Gauge("chat_nats_connected", "1 while the NATS connection is up")

SERVICE_REQUESTS = Counter(
    "chat_service_requests_total",
    "Requests answered by a service endpoint",
    ["service", "endpoint", "outcome"],
)
SERVICE_LATENCY = Histogram(
    "chat_service_request_seconds",
    "Time to answer a service request",
    ["service", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# --- gateway ---------------------------------------------------------------
WS_CONNECTIONS = Gauge("chat_ws_connections", "Open, authenticated WebSocket connections")
WS_MESSAGES_IN = Counter("chat_ws_messages_in_total", "Frames received from clients")
WS_MESSAGES_OUT = Counter("chat_ws_messages_out_total", "Events written to client sockets")
WS_DROPPED = Counter("chat_ws_dropped_total", "Events or frames dropped", ["reason"])
DELIVERY_LATENCY = Histogram(
    "chat_delivery_latency_seconds",
    "From the event's publish timestamp to its write on the local sockets",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
GAP_REPAIRS = Counter("chat_gap_repairs_total", "Events fetched from the stream to fill a gap")
# Attachments (gateways; docs/protocol.md §7).
ATTACHMENT_UPLOADS = Counter("chat_attachment_uploads_total", "Uploads stored, by type", ["type"])
ATTACHMENT_UPLOAD_BYTES = Counter("chat_attachment_upload_bytes_total",
                                  "Bytes of uploads stored (files, not thumbnails)")
ATTACHMENT_REFUSED = Counter("chat_attachment_uploads_refused_total",
                             "Uploads refused, by HTTP status", ["status"])
ATTACHMENT_DOWNLOADS = Counter("chat_attachment_downloads_total",
                               "Downloads answered, by HTTP status (200, 206, 304, 416)",
                               ["status"])

# Request outcomes (gateways; docs/protocol.md §7). Labels are bounded: the
# frame types below plus ``unknown``, outcome ``ok`` or an ErrorCode value.
WS_REQUESTS = Counter("chat_ws_requests_total",
                      "Client frames answered, by type and outcome (ok or the error code)",
                      ["type", "outcome"])
WS_REQUEST_TYPES = ("send", "join", "leave", "edit", "delete", "react", "read", "history",
                    "presence", "typing", "ping", "auth")
SEND_ACK = Histogram(
    "chat_send_ack_seconds",
    "From a send frame's arrival to its ack handed to the socket (acked sends only)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
JETSTREAM_PUBLISH_FAILURES = Counter(
    "chat_jetstream_publish_failures_total",
    "Durable publishes that failed: timeout, no_responders, refused, disconnected",
    ["reason"])
# Every process's HTTP requests (chat_kit.http.CountRequests): the route's
# template (``unmatched`` for none), the method, the status.
HTTP_REQUESTS = Counter("chat_http_requests_total",
                        "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])

_ws_children: dict[tuple[str, str], Any] = {}


def ws_request(type_: str, outcome: str) -> Any:
    """The ``chat_ws_requests_total`` child of (type, outcome), resolved once:
    ``labels()`` takes a lock and builds a key on every call."""
    child = _ws_children.get((type_, outcome))
    if child is None:
        if type_ not in WS_REQUEST_TYPES:
            type_ = "unknown"
        child = _ws_children[type_, outcome] = WS_REQUESTS.labels(type_, outcome)
    return child


for _type in WS_REQUEST_TYPES:  # every type's ok series exists from the start (rate() needs it)
    ws_request(_type, "ok")
