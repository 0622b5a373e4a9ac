"""chat-presence: presence-service.

config   settings from CHAT_PRESENCE_* variables
state    per-room, per-user aggregation of connection entries (no I/O)
service  KV watchers, the leader lease, join/leave announcements, members queries
main     the ``chat-presence`` entry point
"""
