"""Prometheus metrics shared by every process (names: docs/protocol.md §7).

Gateway-only metrics live here too so that one registry serves ``/metrics``
and dashboards find every name in one place.
"""

from __future__ import annotations

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

