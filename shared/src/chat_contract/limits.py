"""Every limit of the contract, in one place (docs/protocol.md §8.1 lists them all).

These are the bounds a client can count on and every deployable enforces
alike: a gateway refusing what history-service would accept (or the reverse)
is a bug, so both import them from here. Operational limits that an operator
tunes (rates, buffers, timeouts) are settings of their deployable instead,
each an environment variable (README "Configuration").
"""

from __future__ import annotations

# --- ids and names --------------------------------------------------------------------
# Room ids are one NATS subject token: a closed alphabet (chat_contract.rooms).
ROOM_ID_MAX = 64
# A request id is echoed in the ack; longer ones are bad_request.
REQUEST_ID_MAX = 64
# Message ids are made by gateways (hex); a longer id names no message.
MSG_ID_MAX = 64
CLIENT_MSG_ID_MAX = 64
# User ids are made by auth-service; user names are chosen at registration.
USER_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
USERNAME_PATTERN = r"[A-Za-z0-9_.-]{3,32}"
# Where a user is named by id or name (invites, DMs, blocks): either alphabet.
USER_REF_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
PASSWORD_MIN, PASSWORD_MAX = 8, 256

# --- messages -------------------------------------------------------------------------
# Unicode code points; beyond → too_large (the socket stays open).
TEXT_MAX_CHARS = 4000
# Sequences are JetStream's uint64, stored as PostgreSQL bigint.
SEQ_MAX = 2**63 - 1
# A history page (`limit`), REST and WebSocket alike.
PAGE_MIN, PAGE_MAX = 1, 100
# What a `join` with `since` returns at most as `missed` (the rest: page history).
MISSED_MAX = 500
# A `react` frame's emoji: code points of one emoji sequence (chat_contract.emoji).
EMOJI_MAX_CHARS = 32
# Distinct `@name`s of one message that are looked up (the rest are not mentions).
MENTIONS_MAX = 20
# A `send`'s `attachments`: at most this many upload ids (more → bad_request).
# A contract bound, not a setting: history-service refuses records beyond it.
ATTACHMENTS_PER_MESSAGE_MAX = 10
# Attachment ids are made by gateways (`a_` + random); a longer one names no upload.
ATTACHMENT_ID_MAX = 64
# An uploaded file's name: code points kept (longer names are cut, never refused).
ATTACHMENT_NAME_MAX = 255

# --- rooms ----------------------------------------------------------------------------
ROOM_NAME_MAX = 100
ROOM_PASSWORD_MAX = 256
ROOM_INITIAL_MEMBERS_MAX = 100
# GET /v1/rooms and the public directory: `limit` 1..100 (the default is the max).
ROOM_LIST_MAX = 100
BLOCKS_MAX = 1000
# svc.auth.users: ids or names looked up at once.
USERS_LOOKUP_MAX = 100
# svc.auth.users `prefix`: at most this many users whose name starts with it.
USERS_PREFIX_MAX = 20

# --- search ---------------------------------------------------------------------------
SEARCH_QUERY_MAX = 200  # characters of `q` (at least 1)
SEARCH_LIMIT_MAX = 50
SEARCH_OFFSET_MAX = 1000

# The server API's bot senders (README "Server API"): ``bot_<name>`` is the
# sender's id, ``<name>`` its name; user ids are ``u_<hex>``, so never a clash.
BOT_NAME_PATTERN = r"[A-Za-z0-9_-]{1,32}"
BOT_ID_PREFIX = "bot_"
