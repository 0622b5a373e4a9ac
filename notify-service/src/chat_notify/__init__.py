"""chat-notify: notification-service (notify-service/README.md).

config      settings from CHAT_NOTIFY_* variables
signing     the webhook signature: HMAC-SHA256 over "<timestamp>.<body>" (no I/O)
backoff     the retry schedule: exponential backoff with full jitter (no I/O)
recipients  who is notified of a record, and how (no I/O)
payload     the webhook body and the dead letter (no I/O)
levels      per-user, per-room levels in PostgreSQL (schema ``notify``)
directory   what other services know: room members, names, blocks, who is online
webhook     POST with retries; the dead-letter stream NOTIFY_DEAD
consumer    the durable push consumer of the chat streams, one message at a time
metrics     chat_notify_*
service     the Component chat_kit.runtime starts and stops
main        the ``chat-notify`` entry point
"""

__version__ = "0.1.0"
