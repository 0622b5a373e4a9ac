"""chat-history: stores every chat event, serves history pages by seq, and owns
the room model (rooms, memberships, bans, blocks, read pointers, search).

config      HistorySettings from CHAT_HISTORY_* / CHAT_DATABASE_URL
records     stream payload → row → ``message`` event; page assembly (pure)
store       history.messages in PostgreSQL: idempotent batch insert, pages
consumer    the ``history-push`` durable push consumer: buffer, insert, then ack
freshness   read-your-writes: the room's last stream seq vs the ack floor
api         the svc.history.messages endpoint
rooms_store the rooms domain in PostgreSQL (migration 0003)
rooms_api   the svc.rooms.* endpoints: rules, validation, state notices
users       user lookup through auth-service (svc.auth.users)
service     the Component: pool, migrations, consumer, micro service
main        the ``chat-history`` console script
"""

__version__ = "0.1.0"
