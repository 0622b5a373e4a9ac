"""NATS subjects and stream names (docs/protocol.md §6, and the project's own in §9 and §10).

Room ids are validated before they reach here; the builders assert it so that
a subject token can never carry ``.``, ``*``, ``>`` or white space.
"""

from __future__ import annotations

from .rooms import is_valid_room_id

# JetStream stream that stores every chat event (subjects chat.room.*).
CHAT_STREAM = "CHAT"
CHAT_SUBJECTS = "chat.room.*"
# The stream republishes each stored event here, with its sequence headers.
LIVE_PREFIX = "chat.live"
LIVE_DEST_TEMPLATE = LIVE_PREFIX + ".{{wildcard(1)}}"

# Headers set by JetStream's RePublish.
HDR_SEQUENCE = "Nats-Sequence"
HDR_LAST_SEQUENCE = "Nats-Last-Sequence"
HDR_MSG_ID = "Nats-Msg-Id"

# Request-reply subjects of the services (queue groups share the load).
AUTH_REGISTER = "svc.auth.register"
AUTH_LOGIN = "svc.auth.login"
AUTH_REFRESH = "svc.auth.refresh"
AUTH_LOGOUT = "svc.auth.logout"
AUTH_JWKS = "svc.auth.jwks"
HISTORY_MESSAGES = "svc.history.messages"
PRESENCE_MEMBERS = "svc.presence.members"
PRESENCE_ONLINE = "svc.presence.online"
# notification-service (notify-service/README.md): a user's level per room.
NOTIFY_LEVEL = "svc.notify.level"
AUTH_USERS = "svc.auth.users"
# A password change and the admin's disable/enable (both end every session of the user).
AUTH_PASSWORD = "svc.auth.password"
AUTH_DISABLE = "svc.auth.disable"
# history-service's room model (README "Rooms"): one endpoint each.
ROOMS_CREATE = "svc.rooms.create"
ROOMS_GET = "svc.rooms.get"
ROOMS_LIST = "svc.rooms.list"
ROOMS_ACCESS = "svc.rooms.access"
ROOMS_MEMBER = "svc.rooms.member"
ROOMS_ARCHIVE = "svc.rooms.archive"
ROOMS_DM = "svc.rooms.dm"
ROOMS_BLOCK = "svc.rooms.block"
ROOMS_BLOCKS = "svc.rooms.blocks"
ROOMS_CHANGE = "svc.rooms.change"
ROOMS_READ = "svc.rooms.read"
ROOMS_SEARCH = "svc.rooms.search"
# A reaction's grant, and a send's thread root and @names (issue 14).
ROOMS_REACT = "svc.rooms.react"
ROOMS_RESOLVE = "svc.rooms.resolve"
# The server API's trusted reads (README "Server API"): every room, one
# room's members, whoever asks; only the gateway's role may ask.
ROOMS_DIRECTORY = "svc.rooms.directory"
ROOMS_ROSTER = "svc.rooms.roster"
# Attachments (README "Attachments"): history-service keeps their metadata.
ATTACHMENTS_CHECK = "svc.attachments.check"
ATTACHMENTS_REGISTER = "svc.attachments.register"
ATTACHMENTS_CLAIM = "svc.attachments.claim"
ATTACHMENTS_GET = "svc.attachments.get"
# The object store holding the files and thumbnails (stream OBJ_CHAT_ATTACHMENTS).
ATTACHMENTS_BUCKET = "CHAT_ATTACHMENTS"
ATTACHMENTS_STREAM = f"OBJ_{ATTACHMENTS_BUCKET}"
# A user's blocked set after a change (BlocksNotice); gateways subscribe to users.*.blocks.
BLOCKS_PREFIX = "users"
BLOCKS_WILDCARD = "users.*.blocks"
# Direct-message rooms have ids with this prefix, which nobody else may create.
DM_PREFIX = "dm-"

# JetStream KV buckets of presence-service (presence-service/README.md).
# Live entries, one key per (room, user, connection), expiring by the bucket TTL.
PRESENCE_BUCKET = "PRESENCE"
# What has been announced: one key per (room, user) present; no TTL.
PRESENCE_ANNOUNCED_BUCKET = "PRESENCE_ANNOUNCED"
# The leader lease: one key, expiring unless its holder renews it.
PRESENCE_LEADER_BUCKET = "PRESENCE_LEADER"
PRESENCE_KV_PREFIX = f"$KV.{PRESENCE_BUCKET}."
PRESENCE_STREAM = f"KV_{PRESENCE_BUCKET}"

# Per-user connection cap across gateways (gateway/README, README "Limits"),
# core NATS only, nothing stored: a gateway asks the others which sessions of
# a user they hold (``sessions.list.<user>``, answered on the asker's
# ``sessions.held.<instance>``), and asks the holder to close one (4409).
SESSION_LIST_PREFIX = "sessions.list"
SESSION_HELD_PREFIX = "sessions.held"
SESSION_KICK_PREFIX = "sessions.kick"

# The server API (README "Server API", docs/protocol.md §5.1): requests of an
# integrator's backend (the NATS role ``server``), answered by the gateways in
# the queue group ``server``; and the notice that closes a user's sockets on
# every gateway (``sessions.disconnect.<user>``, ServerDisconnectNotice).
SERVER_PREFIX = "svc.server"
SERVER_WILDCARD = "svc.server.*"
SERVER_QUEUE = "server"
SERVER_PUBLISH = "svc.server.publish"
SERVER_DISCONNECT = "svc.server.disconnect"
SERVER_PRESENCE = "svc.server.presence"
SERVER_ROOMS = "svc.server.rooms"
SERVER_MEMBERS = "svc.server.members"
SERVER_DISABLE = "svc.server.disable"
SESSION_DISCONNECT_PREFIX = "sessions.disconnect"
SESSION_DISCONNECT_WILDCARD = "sessions.disconnect.*"
# notification-service's dead letters: webhooks that failed for good, one
# subject per recipient (``notify.dead.<user id>``), kept in this stream.
NOTIFY_DEAD_STREAM = "NOTIFY_DEAD"
NOTIFY_DEAD_PREFIX = "notify.dead"

# The revocation denylist (auth-service writes, gateways watch): keys
# ``sid.<session id>`` (that login's tokens are refused) and ``user.<user id>``
# (value: Unix seconds; the user's tokens issued before it are refused).
REVOKED_BUCKET = "CHAT_REVOKED"


def _checked(room: str) -> str:
    if not is_valid_room_id(room):
        raise ValueError(f"invalid room id {room!r}")
    return room


def room_subject(room: str) -> str:
    return f"chat.room.{_checked(room)}"


def live_subject(room: str) -> str:
    return f"{LIVE_PREFIX}.{_checked(room)}"


def state_subject(room: str) -> str:
    """Room state changes (RoomState): reads, removals, archive. Not under the
    CHAT stream's ``chat.room.*`` (one token), so never stored or sequenced."""
    return f"chat.room.{_checked(room)}.state"


def blocks_subject(user_id: str) -> str:
    return f"{BLOCKS_PREFIX}.{user_id}.blocks"


def notify_dead_subject(user_id: str) -> str:
    return f"{NOTIFY_DEAD_PREFIX}.{user_id}"


def presence_subject(room: str) -> str:
    return f"presence.{_checked(room)}"


def presence_key(room: str, user_id: str, session: str) -> str:
    """Live KV key of one connection in one room (user and session ids are
    ``[A-Za-z0-9_-]``, so the key splits back on ``.``)."""
    return f"{_checked(room)}.{user_id}.{session}"


def room_of_subject(subject: str) -> str:
    """The room token of ``chat.room.<room>`` or ``chat.live.<room>``."""
    return subject.rsplit(".", 1)[-1]
