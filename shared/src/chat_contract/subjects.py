"""NATS subjects and stream names (PROTOCOL.md §6 plus the project's own).

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


def _checked(room: str) -> str:
    if not is_valid_room_id(room):
        raise ValueError(f"invalid room id {room!r}")
    return room


def room_subject(room: str) -> str:
    return f"chat.room.{_checked(room)}"


def live_subject(room: str) -> str:
    return f"{LIVE_PREFIX}.{_checked(room)}"


def presence_subject(room: str) -> str:
    return f"presence.{_checked(room)}"


def room_of_subject(subject: str) -> str:
    """The room token of ``chat.room.<room>`` or ``chat.live.<room>``."""
    return subject.rsplit(".", 1)[-1]
