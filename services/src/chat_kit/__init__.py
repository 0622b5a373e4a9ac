"""chat-kit: the I/O layer every chat deployable imports (and nothing else).

settings  typed configuration from CHAT_* environment variables
logs      one JSON object per line
bus       NATS connect/drain, the CHAT stream, request-reply client and endpoints
db        asyncpg pool and plain-SQL migrations with a version table
http      /healthz, /readyz, /metrics
runtime   process lifecycle: signals, ordered shutdown
"""
