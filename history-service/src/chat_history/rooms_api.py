"""The ``svc.rooms.*`` endpoints: validation, the room rules, and the notices.

Rules (README "Rooms"): public rooms are open to anyone not removed from
them; password rooms need the password from non-members (wrong passwords
are throttled); private rooms admit members (and the owner) only; archived
rooms admit nobody and are read-only; DM rooms belong to their two users;
nobody puts a user into a room whose owner-to-be or inviter that user
blocked. Every refusal is a :class:`ChatError` with its wire code.

Notices (ReadNotice, MemberNotice, ArchiveNotice on ``chat.room.<room>.state``,
BlocksNotice on ``users.<id>.blocks``) go out on core NATS after the database
committed: a gateway that is disconnected at that instant misses one (it
catches up at the next join, whose AccessReply carries the current state).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, TypeVar

import msgspec
from nats.aio.client import Client as NATS

from chat_contract import subjects
from chat_contract.bus import (
    AccessReply,
    AccessRequest,
    ArchiveNotice,
    BlockRequest,
    BlocksNotice,
    BlocksReply,
    BlocksRequest,
    ChangeGrant,
    ChangeRequest,
    DmRequest,
    MemberChange,
    MemberNotice,
    ReadNotice,
    ReadReply,
    ReadRequest,
    RoomCreate,
    RoomListRequest,
    RoomRef,
    RoomReply,
    RoomsReply,
    RoomView,
    SearchReply,
    SearchRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_contract.frames import MAX_SEQ
from chat_contract.rooms import is_valid_room_id
from chat_kit.bus import MicroHandler, endpoint
from chat_kit.db import DB_UNAVAILABLE
from chat_kit.logs import audit, event
from chat_kit.passwords import Passwords
from chat_kit.throttle import PasswordThrottle

from . import users
from .rooms_store import RoomsStore, Standing

log = logging.getLogger("chat_history.rooms")

NAME_MAX = 100
PASSWORD_MAX = 256
MEMBERS_MAX = 100
LIST_MAX = 200
SEARCH_Q_MAX = 200
SEARCH_LIMIT_MAX = 50
SEARCH_OFFSET_MAX = 1000
# Search ranks only the newest matches: enough for the deepest allowed page
# (offset 1000 + limit 50) plus the row that tells has_more.
SEARCH_CANDIDATES = SEARCH_OFFSET_MAX + SEARCH_LIMIT_MAX + 1
BLOCKS_MAX = 1000
MSG_ID_MAX = 64  # no message has a longer id (docs/protocol.md §8: unknown → not_found)
# Wrong room passwords (README "Rooms"): per (user, room) and per user, within
# the window; beyond → rate_limited before any argon2 verify.
PASSWORD_FAILURES_PER_ROOM = 10
PASSWORD_FAILURES_PER_USER = 30
PASSWORD_WINDOW = 300.0
# User ids and usernames share this alphabet (auth-service); anything else
# cannot name a user and never reaches a query or a subject.
_USER_REF = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

Fresh = Callable[[str], Awaitable[None]]
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)
JoinRule = Literal["ok", "password", "forbidden"]


# --- pure rules (unit-tested) ------------------------------------------------


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
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid room id")


def check_user_id(user: str) -> None:
    if not _USER_ID.fullmatch(user):
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid user id")


def room_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX or "\x00" in name:
        raise ChatError(ErrorCode.BAD_REQUEST, f"name must be 1-{NAME_MAX} characters")
    return name


def check_password(password: str | None) -> None:
    if password is not None and not 1 <= len(password) <= PASSWORD_MAX:
        raise ChatError(ErrorCode.BAD_REQUEST, f"password must be 1-{PASSWORD_MAX} characters")


def search_query(req: SearchRequest) -> str:
    """The validated, stripped query text."""
    q = req.q.strip()
    if not 1 <= len(q) <= SEARCH_Q_MAX:
        raise ChatError(ErrorCode.BAD_REQUEST, f"q must be 1-{SEARCH_Q_MAX} characters")
    if "\x00" in q:  # PostgreSQL text cannot hold NUL
        raise ChatError(ErrorCode.BAD_REQUEST, "q must not contain NUL")
    if req.room is not None:
        check_room_id(req.room)
    if not 1 <= req.limit <= SEARCH_LIMIT_MAX:
        raise ChatError(ErrorCode.BAD_REQUEST, f"limit must be 1-{SEARCH_LIMIT_MAX}")
    if not 0 <= req.offset <= SEARCH_OFFSET_MAX:
        raise ChatError(ErrorCode.BAD_REQUEST, f"offset must be 0-{SEARCH_OFFSET_MAX}")
    return q


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


def may_see(s: Standing, user: str) -> bool:
    """Room details and history: members and the owner; besides them, anyone not
    removed from it for a public room without a password (a password room's
    history is what its password guards)."""
    if s.member or s.room.owner == user:
        return True
    return s.room.visibility == "public" and s.room.password_hash is None and not s.banned


def _forbidden(message: str) -> ChatError:
    return ChatError(ErrorCode.FORBIDDEN, message)


def _not_found(message: str = "room not found") -> ChatError:
    return ChatError(ErrorCode.NOT_FOUND, message)


# --- the endpoints -------------------------------------------------------------


class RoomsApi:
    def __init__(self, nc: NATS, store: RoomsStore, passwords: Passwords, *,
                 lookup_timeout: float, fresh: Fresh | None = None,
                 throttle: PasswordThrottle | None = None) -> None:
        self._nc = nc
        self._store = store
        self._passwords = passwords
        self.throttle = throttle or PasswordThrottle(
            PASSWORD_FAILURES_PER_ROOM, PASSWORD_FAILURES_PER_USER, PASSWORD_WINDOW,
            "too many wrong room passwords, try again later")
        self._lookup_timeout = lookup_timeout
        # HistoryApi.ensure_fresh: storage holds every stream event of the room.
        self.fresh = fresh

    def endpoints(self, service: str) -> dict[str, tuple[str, MicroHandler]]:
        """Endpoint name → (subject, micro handler), for chat_kit.bus.start_service."""
        def ep(name: str, subject: str, req_type: type[Req],
               handler: Callable[[Req], Awaitable[Rep]]) -> tuple[str, tuple[str, MicroHandler]]:
            return name, (subject, endpoint(service, name, req_type, _db_guard(handler)))

        return dict([
            ep("rooms_create", subjects.ROOMS_CREATE, RoomCreate, self.create),
            ep("rooms_get", subjects.ROOMS_GET, RoomRef, self.get),
            ep("rooms_list", subjects.ROOMS_LIST, RoomListRequest, self.list_rooms),
            ep("rooms_access", subjects.ROOMS_ACCESS, AccessRequest, self.access),
            ep("rooms_member", subjects.ROOMS_MEMBER, MemberChange, self.member),
            ep("rooms_archive", subjects.ROOMS_ARCHIVE, RoomRef, self.archive),
            ep("rooms_dm", subjects.ROOMS_DM, DmRequest, self.dm),
            ep("rooms_block", subjects.ROOMS_BLOCK, BlockRequest, self.block),
            ep("rooms_blocks", subjects.ROOMS_BLOCKS, BlocksRequest, self.blocks),
            ep("rooms_change", subjects.ROOMS_CHANGE, ChangeRequest, self.change),
            ep("rooms_read", subjects.ROOMS_READ, ReadRequest, self.read),
            ep("rooms_search", subjects.ROOMS_SEARCH, SearchRequest, self.search),
        ])

    # --- history reads ----------------------------------------------------------

    async def read_access(self, room: str, user: str) -> list[str]:
        """For HistoryApi: refuse (forbidden) a reader who may not see ``room``;
        otherwise the reader's blocked ids. Unknown rooms read as empty, no error."""
        try:
            s = await self._store.standing(room, user)
            if s is not None and not may_see(s, user):
                raise _forbidden("not a member of this room")
            return await self._store.blocked(user)
        except DB_UNAVAILABLE:
            raise ChatError(ErrorCode.UNAVAILABLE, "rooms store unavailable") from None

    # --- rooms ------------------------------------------------------------------

    async def create(self, req: RoomCreate) -> RoomReply:
        caller = req.caller
        room = req.id if req.id is not None else new_room_id()
        check_room_id(room)
        if room.startswith(subjects.DM_PREFIX):
            raise ChatError(ErrorCode.BAD_REQUEST,
                            f"room ids starting with {subjects.DM_PREFIX} are reserved")
        name = room_name(req.name)
        check_password(req.password)
        wanted = list(dict.fromkeys(m for m in req.members if m != caller.id))
        if len(wanted) > MEMBERS_MAX:
            raise ChatError(ErrorCode.BAD_REQUEST, f"at most {MEMBERS_MAX} members")
        for member in wanted:
            check_user_id(member)
        found = {u.id: u for u in await self._lookup(ids=wanted)}
        missing = [m for m in wanted if m not in found]
        if missing:
            raise _not_found(f"unknown user {missing[0]}")
        # Nobody is put in a room by someone they blocked; which one did stays private.
        if await self._store.blocked_by_any(wanted, caller.id):
            raise _forbidden("some of these users do not accept your invitations")
        password_hash = (await self._passwords.hash(req.password)
                         if req.password is not None else None)
        members = [caller, *(found[m] for m in wanted)]
        if not await self._store.create(room, name, visibility=req.visibility, owner=caller.id,
                                        password_hash=password_hash, members=members):
            raise ChatError(ErrorCode.CONFLICT, "room already exists")
        event(log, "room created", room=room, owner=caller.id, visibility=req.visibility,
              password=password_hash is not None, members=len(members))
        return RoomReply(room=await self._full_view(room, caller.id), created=True)

    async def get(self, req: RoomRef) -> RoomReply:
        check_room_id(req.room)
        s = await self._standing(req.room, req.caller.id)
        if not may_see(s, req.caller.id):
            raise _forbidden("not a member of this room")
        members = await self._store.members(req.room)
        return RoomReply(room=s.room.view(member_count=len(members), members=members))

    async def list_rooms(self, req: RoomListRequest) -> RoomsReply:
        if not 1 <= req.limit <= LIST_MAX:
            raise ChatError(ErrorCode.BAD_REQUEST, f"limit must be 1-{LIST_MAX}")
        if req.public:
            return RoomsReply(rooms=await self._store.list_public(req.limit))
        return RoomsReply(rooms=await self._store.list_mine(req.caller.id, req.limit))

    async def archive(self, req: RoomRef) -> RoomReply:
        check_room_id(req.room)
        s = await self._standing(req.room, req.caller.id)
        if s.room.owner != req.caller.id:
            raise _forbidden("only the owner may archive the room")
        if not s.room.archived:
            await self._store.archive(req.room)
            event(log, "room archived", room=req.room, owner=req.caller.id)
        # Also when it already was: a gateway that missed the first one learns it now.
        await self._notify(subjects.state_subject(req.room), ArchiveNotice(room=req.room))
        s = await self._standing(req.room, req.caller.id)
        return RoomReply(room=s.room.view(member_count=await self._store.member_count(req.room)))

    # --- membership -------------------------------------------------------------

    async def access(self, req: AccessRequest) -> AccessReply:
        caller = req.caller
        check_room_id(req.room)
        s = await self._store.standing(req.room, caller.id)
        if s is None:
            # DM rooms come only from POST /v1/dm, never from a join.
            if not req.create or req.room.startswith(subjects.DM_PREFIX):
                raise _not_found()
            if await self._store.ensure_public(req.room, caller.id):
                event(log, "room created", room=req.room, owner=caller.id, visibility="public",
                      via="join")
            s = await self._standing(req.room, caller.id)
        rule = join_rule(s, caller.id)
        if rule == "password":
            if req.password is None:
                raise _forbidden("wrong room password")
            # Before the argon2 verify: a throttled guesser costs no hash. The
            # attempt counts as a failure until the verify says otherwise, so
            # concurrent guesses cannot all slip past the check meanwhile.
            try:
                stamp = self.throttle.attempt(caller.id, req.room)
            except ChatError:
                audit(log, "room password throttled", room=req.room, user=caller.id)
                raise
            if not await self._passwords.verify(s.room.password_hash,
                                                req.password[:PASSWORD_MAX]):
                audit(log, "room password rejected", room=req.room, user=caller.id)
                raise _forbidden("wrong room password")
            self.throttle.succeeded(caller.id, req.room, stamp)
        elif rule == "forbidden":
            raise _forbidden("you may not join this room")
        if not s.member and self.fresh is not None:
            # A new member's read pointer starts at the room's last stored seq:
            # let storage catch up first, or what is still on its way would
            # count as unread. Best effort: a lagging store must not block joins.
            with contextlib.suppress(ChatError):
                await self.fresh(req.room)
        # Re-checked under a row lock: an archive or removal since counts.
        if not await self._store.join(req.room, caller):
            raise _forbidden("you may not join this room")
        # No member_count: joins are frequent and the gateway does not show one.
        return AccessReply(room=s.room.view(), blocked=await self._store.blocked(caller.id))

    async def member(self, req: MemberChange) -> RoomReply:
        caller = req.caller
        check_room_id(req.room)
        check_user_id(req.user)
        s = await self._standing(req.room, caller.id)
        if req.add:
            return await self._invite(req, s)
        if req.user == caller.id:
            if not await self._store.remove(req.room, caller.id, ban=False):
                raise _not_found("not a member of this room")
            change: Literal["left", "removed"] = "left"
        else:
            if s.room.owner != caller.id:
                raise _forbidden("only the owner may remove members")
            if not await self._store.remove(req.room, req.user, ban=True):
                raise _not_found("not a member of this room")
            change = "removed"
            event(log, "member removed", room=req.room, user=req.user, by=caller.id)
        await self._notify(subjects.state_subject(req.room),
                           MemberNotice(room=req.room, user=req.user, event=change))
        s = await self._standing(req.room, caller.id)
        return RoomReply(room=s.room.view(member_count=await self._store.member_count(req.room)))

    async def _invite(self, req: MemberChange, s: Standing) -> RoomReply:
        caller = req.caller
        owner = s.room.owner == caller.id
        if not (s.member or owner):
            raise _forbidden("only members may invite")
        if s.room.dm:
            raise _forbidden("direct-message rooms take no invites")
        if s.room.archived:
            raise _forbidden("the room is archived")
        found = await self._lookup(ids=[req.user])
        if not found or found[0].id != req.user:
            raise _not_found("unknown user")
        if await self._store.is_blocked(req.user, caller.id):
            raise _forbidden("this user does not accept your invitations")
        target = await self._standing(req.room, req.user)
        if target.banned and not owner:
            raise _forbidden("only the owner may invite a removed user back")
        if not await self._store.invite(req.room, found[0], lift_ban=target.banned):
            raise _forbidden("the user was removed, or the room archived, meanwhile")
        return RoomReply(room=await self._full_view(req.room, caller.id))

    async def dm(self, req: DmRequest) -> RoomReply:
        caller = req.caller
        if not _USER_REF.fullmatch(req.user):
            raise ChatError(ErrorCode.BAD_REQUEST, "invalid user")
        if req.user == caller.id:
            raise ChatError(ErrorCode.BAD_REQUEST, "no direct messages with yourself")
        found = await self._lookup(ids=[req.user], names=[req.user])
        if not found:
            raise _not_found("unknown user")
        peer = found[0]
        if peer.id == caller.id:
            raise ChatError(ErrorCode.BAD_REQUEST, "no direct messages with yourself")
        if await self._store.is_blocked(peer.id, caller.id):
            raise _forbidden("this user does not accept your messages")
        room = dm_room_id(caller.id, peer.id)
        created = await self._store.create(
            room, dm_name(caller.name, peer.name), visibility="private", owner=None,
            password_hash=None, members=[caller, peer], dm_users=sorted((caller.id, peer.id)))
        if created:
            event(log, "dm created", room=room)
        else:
            # Whoever asks again is (back) in the room; the other's choice to leave stands.
            await self._store.invite(room, caller, lift_ban=False)
        return RoomReply(room=await self._full_view(room, caller.id), created=created)

    async def blocks(self, req: BlocksRequest) -> BlocksReply:
        return BlocksReply(blocked=await self._store.blocked(req.caller.id))

    async def block(self, req: BlockRequest) -> BlocksReply:
        caller = req.caller
        check_user_id(req.user)
        if req.user == caller.id:
            raise ChatError(ErrorCode.BAD_REQUEST, "you cannot block yourself")
        found = await self._lookup(ids=[req.user])
        if not found or found[0].id != req.user:
            raise _not_found("unknown user")
        blocked = await self._store.set_block(caller.id, req.user, req.block, BLOCKS_MAX)
        if blocked is None:
            raise ChatError(ErrorCode.BAD_REQUEST, f"too many blocks (at most {BLOCKS_MAX})")
        await self._notify(subjects.blocks_subject(caller.id),
                           BlocksNotice(user=caller.id, blocked=blocked))
        return BlocksReply(blocked=blocked)

    # --- messages ---------------------------------------------------------------

    async def change(self, req: ChangeRequest) -> ChangeGrant:
        caller = req.caller
        check_room_id(req.room)
        if not 1 <= len(req.msg_id) <= MSG_ID_MAX or "\x00" in req.msg_id:
            raise _not_found("unknown message")
        s = await self._standing(req.room, caller.id)
        # The gateway admits only joined sockets; this is the second line (a
        # removal or leave that the gateway has not applied yet).
        if not (s.member or s.room.owner == caller.id):
            raise _forbidden("not a member of this room")
        await self._ensure_fresh(req.room)
        original = await self._store.original(req.room, req.msg_id)
        if original is None or original.deleted:
            raise _not_found("unknown message")
        own = original.sender.id == caller.id
        if req.action == "edit":
            if not own:
                raise _forbidden("you may edit only your own messages")
            if s.room.archived:
                raise _forbidden("the room is archived")
        elif not (own or s.room.owner == caller.id):
            raise _forbidden("you may delete only your own messages")
        return ChangeGrant(sender=original.sender, ts=original.ts, reply_to=original.reply_to)

    async def read(self, req: ReadRequest) -> ReadReply:
        caller = req.caller
        check_room_id(req.room)
        if not 0 <= req.seq <= MAX_SEQ:
            raise ChatError(ErrorCode.BAD_REQUEST, f"seq must be 0-{MAX_SEQ}")
        s = await self._standing(req.room, caller.id)
        if not s.member:
            raise _forbidden("not a member of this room")
        # Clamp to the stored last seq; a seq beyond it may be an event still on
        # its way to storage (delivered before stored), so wait for that first.
        last = await self._store.last_seq(req.room)
        if req.seq > last:
            await self._ensure_fresh(req.room)
            last = await self._store.last_seq(req.room)
        result = await self._store.mark_read(req.room, caller.id, min(req.seq, last))
        if result is None:  # left in the meantime
            raise _forbidden("not a member of this room")
        seq, moved = result
        if moved:
            await self._notify(subjects.state_subject(req.room),
                               ReadNotice(room=req.room, user=caller, seq=seq))
        return ReadReply(seq=seq, moved=moved)

    async def search(self, req: SearchRequest) -> SearchReply:
        q = search_query(req)
        if req.room is not None:
            s = await self._standing(req.room, req.caller.id)
            if not s.member:
                raise _forbidden("not a member of this room")
        hits = await self._store.search(req.caller.id, q, req.room, req.limit + 1, req.offset,
                                        SEARCH_CANDIDATES)
        return SearchReply(results=hits[:req.limit], has_more=len(hits) > req.limit)

    # --- helpers ----------------------------------------------------------------

    async def _standing(self, room: str, user: str) -> Standing:
        s = await self._store.standing(room, user)
        if s is None:
            raise _not_found()
        return s

    async def _full_view(self, room: str, user: str) -> RoomView:
        s = await self._standing(room, user)
        if may_see(s, user):
            members = await self._store.members(room)
            return s.room.view(member_count=len(members), members=members)
        return s.room.view(member_count=await self._store.member_count(room))

    async def _lookup(self, ids: Iterable[str] = (), names: Iterable[str] = ()) -> list[User]:
        return await users.lookup(self._nc, ids, names, timeout=self._lookup_timeout)

    async def _ensure_fresh(self, room: str) -> None:
        if self.fresh is not None:
            await self.fresh(room)

    async def _notify(self, subject: str, notice: msgspec.Struct) -> None:
        try:
            await self._nc.publish(subject, msgspec.json.encode(notice))
        except Exception as exc:  # core NATS: a lost notice is a documented limit
            event(log, "notice not published", logging.WARNING, subject=subject,
                  error=repr(exc))


def _db_guard(handler: Callable[[Req], Awaitable[Rep]]) -> Callable[[Req], Awaitable[Rep]]:
    """Database outages answer ``unavailable`` (worth a retry), not ``internal``."""

    async def guarded(req: Req) -> Rep:
        try:
            return await handler(req)
        except DB_UNAVAILABLE:
            raise ChatError(ErrorCode.UNAVAILABLE, "rooms store unavailable") from None

    return guarded
