"""chat-history: stores every chat event, serves history pages by seq, and owns
the room model (rooms, memberships, bans, blocks, read pointers, search).

config      HistorySettings from CHAT_HISTORY_* / CHAT_DATABASE_URL
records     stream payload → row → ``message`` event; page assembly (pure)
store       history.messages in PostgreSQL: idempotent batch insert, pages
consumer_setup the CHAT stream and the ``history-push`` durable: names, config, creation
consumer    one stream → PostgreSQL: subscription, buffer, writer loop, checks, stop
batching    when the writer takes a batch: the linger policy (sans-I/O)
acks        deliveries by reply subject: the stream seq parser, a batch's acks in one write
commit      decode, insert, then ack each message (one write per batch); row retry, term
erasure     a deleted message's text erased from the stream after commit
troubles    what is failing now, logged once per outage; readiness reads it
freshness   read-your-writes: the room's last stream seq vs the ack floor
api         the svc.history.messages endpoint
rooms_store the rooms domain in PostgreSQL (migration 0003)
room_rules  who may join, see, invite, remove, edit, delete; request validation (pure)
rooms_context what every svc.rooms.* endpoint shares: store, user lookups, catch-up, notices
room_endpoints     svc.rooms.create/get/list/archive/access/member/dm; history read access
block_endpoints    svc.rooms.block/blocks
activity_endpoints svc.rooms.change (edit/delete grants), read (pointers), search
users       user lookup through auth-service (svc.auth.users)
service     the Component: pool, migrations, consumers, the micro service's endpoints
main        the ``chat-history`` console script
"""

__version__ = "0.1.0"
