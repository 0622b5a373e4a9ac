"""chat-kit: the I/O layer every chat deployable imports (and nothing else).

settings   typed configuration from CHAT_* environment variables (env: the readers)
logs       one JSON object per line
audit      audit lines a client cannot flood (one per key per window)
bus        NATS connect/drain, request-reply client and endpoints (chat_contract.rpc)
nats_auth  NATS credentials and TLS from the environment, per-role inboxes
stream     the chat streams: retention, partitions, create-or-verify
admin      chat-admin: stream show/apply, user disable/enable
db         asyncpg pool and plain-SQL migrations with a version table (CHAT_DB_MIGRATE)
migrate    python -m chat_kit.migrate SCHEMA PACKAGE: the migration Job's command
passwords  argon2id off the event loop, bounded
throttle   token buckets and failure windows (logins, registrations, passwords)
metrics    the gateway metrics of docs/protocol.md §7
http       /healthz, /readyz, /metrics
runtime    process lifecycle: signals, ordered shutdown
"""
