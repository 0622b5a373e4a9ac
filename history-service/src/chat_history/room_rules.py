"""The room rules, pure: who may join, see, invite, remove, edit and delete, and
what a valid request looks like (no I/O; unit-tested in test_history_room_rules).

The endpoint modules (:mod:`.room_endpoints`, :mod:`.block_endpoints`,
:mod:`.activity_endpoints`) fetch a :class:`~.rooms_store.Standing` and ask
these functions; every refusal is a :class:`ChatError` with its wire code
(docs/protocol.md §3.6, §5, §8). Limits are the contract's
(:mod:`chat_contract.limits`), so the gateway and this service refuse alike.

Rules (README "Rooms"): public rooms are open to anyone not removed from
them; password rooms need the password from non-members; private rooms admit
members (and the owner) only; archived rooms admit nobody and are read-only;
DM rooms belong to their two users.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from datetime import datetime
from typing import Literal

from chat_contract import limits, subjects
from chat_contract.bus import SearchRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.rooms import is_valid_room_id

from .rooms_store import Standing

# Search ranks only the newest matches: enough for the deepest allowed page
# (offset max + limit max) plus the row that tells has_more.
SEARCH_CANDIDATES = limits.SEARCH_OFFSET_MAX + limits.SEARCH_LIMIT_MAX + 1
# Wrong room passwords (README "Rooms"): per (user, room) and per user, within
# the window; beyond → rate_limited before any argon2 verify.
PASSWORD_FAILURES_PER_ROOM = 10
PASSWORD_FAILURES_PER_USER = 30
PASSWORD_WINDOW = 300.0
# User ids and usernames (auth-service): anything else cannot name a user and
# never reaches a query or a subject.
_USER_REF = re.compile(limits.USER_REF_PATTERN)
_USER_ID = re.compile(limits.USER_ID_PATTERN)

JoinRule = Literal["ok", "password", "forbidden"]


def forbidden(message: str) -> ChatError:
    return ChatError(ErrorCode.FORBIDDEN, message)


def not_found(message: str = "room not found") -> ChatError:
    return ChatError(ErrorCode.NOT_FOUND, message)


def bad_request(message: str) -> ChatError:
    return ChatError(ErrorCode.BAD_REQUEST, message)


# --- ids and names --------------------------------------------------------------------


def dm_room_id(a: str, b: str) -> str:
    """The one DM room of a pair: the same whoever asks (ids sorted, ``:`` never in an id)."""
    low, high = sorted((a, b))
    return subjects.DM_PREFIX + hashlib.sha256(f"{low}:{high}".encode()).hexdigest()[:32]


def dm_name(a: str, b: str) -> str:
    return ", ".join(sorted((a, b)))


def new_room_id() -> str:
    return "r-" + secrets.token_urlsafe(9)  # 12 characters of [A-Za-z0-9_-]


def check_room_id(room: str) -> None:
    if not is_valid_room_id(room):
        raise bad_request("invalid room id")


def check_new_room_id(room: str) -> None:
    """A room id a client may create: valid, and not in the DM namespace."""
    check_room_id(room)
    if room.startswith(subjects.DM_PREFIX):
        raise bad_request(f"room ids starting with {subjects.DM_PREFIX} are reserved")


def check_user_id(user: str) -> None:
    if not _USER_ID.fullmatch(user):
        raise bad_request("invalid user id")


def check_user_ref(user: str) -> None:
    """A user named by id or by name (DMs)."""
    if not _USER_REF.fullmatch(user):
        raise bad_request("invalid user")


def room_name(name: str) -> str:
    """The validated, stripped room name."""
    name = name.strip()
    if not 1 <= len(name) <= limits.ROOM_NAME_MAX or "\x00" in name:
        raise bad_request(f"name must be 1-{limits.ROOM_NAME_MAX} characters")
    return name


def check_password(password: str | None) -> None:
    if password is not None and not 1 <= len(password) <= limits.ROOM_PASSWORD_MAX:
        raise bad_request(f"password must be 1-{limits.ROOM_PASSWORD_MAX} characters")


def initial_members(caller: str, members: list[str]) -> list[str]:
    """The users a new room starts with besides its creator: deduplicated, in order."""
    wanted = list(dict.fromkeys(m for m in members if m != caller))
    if len(wanted) > limits.ROOM_INITIAL_MEMBERS_MAX:
        raise bad_request(f"at most {limits.ROOM_INITIAL_MEMBERS_MAX} members")
    for member in wanted:
        check_user_id(member)
    return wanted


def check_list_limit(limit: int) -> None:
    if not 1 <= limit <= limits.ROOM_LIST_MAX:
        raise bad_request(f"limit must be 1-{limits.ROOM_LIST_MAX}")


def encode_cursor(key: tuple[datetime, str]) -> str:
    """The public directory's cursor: the last room's (created_at, id), opaque."""
    created_at, room = key
    raw = f"{created_at.isoformat()}|{room}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The key of :func:`encode_cursor`; anything else is ``bad_request``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, room = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except ValueError:  # bad base64, bad UTF-8 (both ValueErrors), no "|", bad stamp
        raise bad_request("invalid cursor") from None
    if created_at.tzinfo is None or not is_valid_room_id(room):
        raise bad_request("invalid cursor")
    return created_at, room


def check_read_seq(seq: int) -> None:
    if not 0 <= seq <= limits.SEQ_MAX:
        raise bad_request(f"seq must be 0-{limits.SEQ_MAX}")


def is_possible_msg_id(msg_id: str) -> bool:
    """Could a message have this id? (No message has a longer one: unknown → not_found.)"""
    return 1 <= len(msg_id) <= limits.MSG_ID_MAX and "\x00" not in msg_id


def search_query(req: SearchRequest) -> str:
    """The validated, stripped query text."""
    q = req.q.strip()
    if not 1 <= len(q) <= limits.SEARCH_QUERY_MAX:
        raise bad_request(f"q must be 1-{limits.SEARCH_QUERY_MAX} characters")
    if "\x00" in q:  # PostgreSQL text cannot hold NUL
        raise bad_request("q must not contain NUL")
    if req.room is not None:
        check_room_id(req.room)
    if not 1 <= req.limit <= limits.SEARCH_LIMIT_MAX:
        raise bad_request(f"limit must be 1-{limits.SEARCH_LIMIT_MAX}")
    if not 0 <= req.offset <= limits.SEARCH_OFFSET_MAX:
        raise bad_request(f"offset must be 0-{limits.SEARCH_OFFSET_MAX}")
    return q


# --- who may do what ------------------------------------------------------------------


def join_rule(s: Standing, user: str) -> JoinRule:
    """May ``user`` join: at once, with the room password, or not at all."""
    room = s.room
    if room.archived or s.banned or (room.dm and s.peer_blocks):
        return "forbidden"
    if s.member or room.owner == user:
        return "ok"
    if room.dm:
        return "forbidden"
    if room.password_hash is not None:
        return "password"
    return "ok" if room.visibility == "public" else "forbidden"


def is_hidden(s: Standing, user: str) -> bool:
    """May ``user`` not even learn that the room exists? Private rooms they
    are neither member nor owner of, and other people's DMs: every request
    about one answers ``not_found``, as for an unknown id (no existence
    oracle). Public rooms, with or without a password, exist for everyone;
    one's own DM stays one's own after leaving it."""
    return (s.room.visibility == "private" and not s.member and s.room.owner != user
            and not s.dm_party)


def may_see(s: Standing, user: str) -> bool:
    """Room details and history: members and the owner; besides them, anyone not
    removed from it for a public room without a password (a password room's
    history is what its password guards)."""
    if s.member or s.room.owner == user:
        return True
    return s.room.visibility == "public" and s.room.password_hash is None and not s.banned


def is_insider(s: Standing, user: str) -> bool:
    """A member or the owner: who may invite, edit, delete."""
    return s.member or s.room.owner == user


def check_may_invite(s: Standing, caller: str) -> None:
    """Invite anyone at all into this room (the invitee's own checks come after)."""
    if not is_insider(s, caller):
        raise forbidden("only members may invite")
    if s.room.dm:
        raise forbidden("direct-message rooms take no invites")
    if s.room.archived:
        raise forbidden("the room is archived")


def check_may_reinvite(target: Standing, caller: str) -> None:
    """Only the owner brings back a user they removed."""
    if target.banned and target.room.owner != caller:
        raise forbidden("only the owner may invite a removed user back")


def check_may_remove(s: Standing, caller: str) -> None:
    """Removing someone else (leaving needs no permission)."""
    if s.room.owner != caller:
        raise forbidden("only the owner may remove members")


def check_may_archive(s: Standing, caller: str) -> None:
    if s.room.owner != caller:
        raise forbidden("only the owner may archive the room")


def check_may_change(s: Standing, caller: str, action: Literal["edit", "delete"],
                     sender: str) -> None:
    """Edit: one's own message, in a room not archived. Delete: one's own, or any
    as the room's owner (deleting stays possible in an archived room: privacy)."""
    own = sender == caller
    if action == "edit":
        if not own:
            raise forbidden("you may edit only your own messages")
        if s.room.archived:
            raise forbidden("the room is archived")
    elif not (own or s.room.owner == caller):
        raise forbidden("you may delete only your own messages")
