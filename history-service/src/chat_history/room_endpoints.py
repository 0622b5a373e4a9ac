"""The room endpoints: create, get, list, archive, join (``access``), invite,
leave and remove (``member``), direct messages (``dm``); and who may read a
room's history (for ``svc.history.messages``).

Each handler validates with :mod:`.room_rules`, reads the caller's standing,
asks the rules, then writes and notifies through :class:`.RoomsContext`.
Registered in :mod:`.service` (``chat_kit.bus.serves``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

from chat_contract import limits, subjects
from chat_contract.bus import (
    AccessReply,
    AccessRequest,
    ArchiveNotice,
    DmRequest,
    MemberChange,
    MemberNotice,
    RoomCreate,
    RoomListRequest,
    RoomRef,
    RoomReply,
    RoomsReply,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_kit.audit import AuditLimiter
from chat_kit.db import DB_UNAVAILABLE
from chat_kit.logs import audit, event
from chat_kit.passwords import Passwords
from chat_kit.throttle import PasswordThrottle, TokenBuckets, take_buckets

from . import room_rules as rules
from .capacity import UserLimiter
from .refusals import RefusalLog
from .room_rules import forbidden, not_found
from .rooms_context import RoomsContext
from .rooms_store import QuotaExceeded, Standing

log = logging.getLogger("chat_history.rooms")


class RoomEndpoints:
    def __init__(self, ctx: RoomsContext, passwords: Passwords,
                 throttle: PasswordThrottle | None = None, *,
                 creates: UserLimiter | None = None, rooms_owned_max: int = 0) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._passwords = passwords
        # New room passwords per user (each a 64 MiB argon2 hash; README
        # "Security"); off until the service sets CHAT_HISTORY_ROOM_PASSWORD_RATE.
        self.password_sets = TokenBuckets(0.0, 1)
        self._password_audits = AuditLimiter()
        # Room creation (README "Rooms"): per-user rate, and a quota of rooms owned.
        self._creates = creates or UserLimiter(0, 0, 1.0, "new rooms")
        self._rooms_owned_max = rooms_owned_max
        self._refusals = RefusalLog(log)
        self.throttle = throttle or PasswordThrottle(
            rules.PASSWORD_FAILURES_PER_ROOM, rules.PASSWORD_FAILURES_PER_USER,
            rules.PASSWORD_WINDOW, "too many wrong room passwords, try again later")

    # --- history reads ----------------------------------------------------------

    async def read_access(self, room: str, user: str) -> list[str]:
        """For HistoryApi: refuse (forbidden) a reader who may not see ``room``;
        otherwise the reader's blocked ids. Unknown rooms read as empty, no error."""
        try:
            s = await self._store.standing(room, user)
            if s is not None and rules.is_hidden(s, user):
                raise not_found()
            if s is not None and not rules.may_see(s, user):
                raise forbidden("not a member of this room")
            return await self._store.blocked(user)
        except DB_UNAVAILABLE:
            raise ChatError(ErrorCode.UNAVAILABLE, "rooms store unavailable") from None

    # --- rooms ------------------------------------------------------------------

    async def create(self, req: RoomCreate) -> RoomReply:
        caller = req.caller
        room = req.id if req.id is not None else rules.new_room_id()
        rules.check_new_room_id(room)
        name = rules.room_name(req.name)
        rules.check_password(req.password)
        wanted = rules.initial_members(caller.id, req.members)
        found = {u.id: u for u in await self._ctx.lookup(ids=wanted)}
        missing = [m for m in wanted if m not in found]
        if missing:
            raise not_found(f"unknown user {missing[0]}")
        # Nobody is put in a room by someone they blocked; which one did stays private.
        if await self._store.blocked_by_any(wanted, caller.id):
            raise forbidden("some of these users do not accept your invitations")
        self._check_create_rate(caller.id)
        password_hash = (await self._hash_room_password(caller.id, req.password)
                         if req.password is not None else None)
        members = [caller, *(found[m] for m in wanted)]
        try:
            created = await self._store.create(
                room, name, visibility=req.visibility, owner=caller.id,
                password_hash=password_hash, members=members, quota=self._rooms_owned_max)
        except QuotaExceeded:
            raise self._quota_refusal(caller.id) from None
        if not created:
            raise ChatError(ErrorCode.CONFLICT, "room already exists")
        event(log, "room created", room=room, owner=caller.id, visibility=req.visibility,
              password=password_hash is not None, members=len(members))
        return RoomReply(room=await self._ctx.full_view(room, caller.id), created=True)

    def _check_create_rate(self, user: str) -> None:
        """Count a creation attempt, or refuse it (rate_limited): counted up
        front, so concurrent attempts cannot all pass the check."""
        try:
            self._creates.check(user)
        except ChatError:
            self._refusals.refused("room_rate", "room creation rate-limited", user)
            raise
        self._creates.count(user)

    def _quota_refusal(self, user: str) -> ChatError:
        self._refusals.refused("room_quota", "room quota reached", user,
                               quota=self._rooms_owned_max)
        return forbidden(f"you own {self._rooms_owned_max} rooms, the most allowed")

    async def _hash_room_password(self, user: str, password: str) -> str:
        """Hash a new room password: paced per user, then bounded by the hashing
        pool (``unavailable`` when it is busy)."""
        try:
            take_buckets([(self.password_sets, user)], "too many password rooms, try again later")
            return await self._passwords.hash(password)
        except ChatError as exc:
            self._password_audits.audit(log, "room password refused", user, user=user,
                                        reason=exc.code.value)
            raise

    async def get(self, req: RoomRef) -> RoomReply:
        rules.check_room_id(req.room)
        s = await self._ctx.visible(req.room, req.caller.id)
        if not rules.may_see(s, req.caller.id):
            raise forbidden("not a member of this room")
        members = await self._store.members(req.room)
        return RoomReply(room=s.room.view(member_count=len(members), members=members))

    async def list_rooms(self, req: RoomListRequest) -> RoomsReply:
        rules.check_list_limit(req.limit)
        if req.public:
            after = rules.decode_cursor(req.cursor) if req.cursor else None
            page, last = await self._store.list_public(req.limit, after)
            return RoomsReply(rooms=page,
                              next_cursor=rules.encode_cursor(last) if last else None)
        return RoomsReply(rooms=await self._store.list_mine(req.caller.id, req.limit))

    async def archive(self, req: RoomRef) -> RoomReply:
        rules.check_room_id(req.room)
        s = await self._ctx.visible(req.room, req.caller.id)
        rules.check_may_archive(s, req.caller.id)
        if not s.room.archived:
            await self._store.archive(req.room)
            event(log, "room archived", room=req.room, owner=req.caller.id)
        # Also when it already was: a gateway that missed the first one learns it now.
        await self._ctx.notify(subjects.state_subject(req.room), ArchiveNotice(room=req.room))
        s = await self._ctx.standing(req.room, req.caller.id)
        return RoomReply(room=s.room.view(member_count=await self._store.member_count(req.room)))

    # --- membership -------------------------------------------------------------

    async def access(self, req: AccessRequest) -> AccessReply:
        """Join: admit the caller (recording the membership) or refuse."""
        caller = req.caller
        rules.check_room_id(req.room)
        s = await self._store.standing(req.room, caller.id)
        if s is None:
            # DM rooms come only from POST /v1/dm, never from a join.
            if not req.create or req.room.startswith(subjects.DM_PREFIX):
                raise not_found()
            self._check_create_rate(caller.id)
            try:
                created = await self._store.ensure_public(req.room, caller.id,
                                                          self._rooms_owned_max)
            except QuotaExceeded:
                raise self._quota_refusal(caller.id) from None
            if created:
                event(log, "room created", room=req.room, owner=caller.id, visibility="public",
                      via="join")
            s = await self._ctx.standing(req.room, caller.id)
        # A hidden room answers as an unknown one (no existence oracle); only
        # its password, if it has one, lets a stranger in.
        hidden = rules.is_hidden(s, caller.id)
        if hidden and (s.room.password_hash is None or req.password is None):
            raise not_found()
        rule = rules.join_rule(s, caller.id)
        if rule == "password":
            await self._check_room_password(req, s, hidden)
        elif rule == "forbidden":
            raise not_found() if hidden else forbidden("you may not join this room")
        if not s.member and self._ctx.fresh is not None:
            # A new member's read pointer starts at the room's last stored seq:
            # let storage catch up first, or what is still on its way would
            # count as unread. Best effort: a lagging store must not block joins.
            with contextlib.suppress(ChatError):
                await self._ctx.ensure_fresh(req.room)
        # A new member is added under a row lock, re-checking that no archive
        # or removal got there first. A member's rejoin (a reconnect) writes
        # nothing: a removal committed after the read above reaches the
        # gateway as a MemberNotice on the room's state subject, which it
        # subscribed to before asking (docs/protocol.md §11), so a storm of
        # reconnects costs reads only.
        if not s.member and not await self._store.join(req.room, caller):
            raise forbidden("you may not join this room")
        # No member_count: joins are frequent and the gateway does not show one.
        return AccessReply(room=s.room.view(), blocked=await self._store.blocked(caller.id))

    async def _check_room_password(self, req: AccessRequest, s: Standing,
                                   hidden: bool = False) -> None:
        caller = req.caller
        if req.password is None:
            raise forbidden("wrong room password")
        # Before the argon2 verify: a throttled guesser costs no hash. The
        # attempt counts as a failure until the verify says otherwise, so
        # concurrent guesses cannot all slip past the check meanwhile.
        try:
            stamp = self.throttle.attempt(caller.id, req.room)
        except ChatError:
            audit(log, "room password throttled", room=req.room, user=caller.id)
            raise
        if not await self._passwords.verify(s.room.password_hash,
                                            req.password[:limits.ROOM_PASSWORD_MAX]):
            audit(log, "room password rejected", room=req.room, user=caller.id)
            raise not_found() if hidden else forbidden("wrong room password")
        self.throttle.succeeded(caller.id, req.room, stamp)

    async def member(self, req: MemberChange) -> RoomReply:
        """Invite (``add``), or leave (oneself) / remove (someone else)."""
        caller = req.caller
        rules.check_room_id(req.room)
        rules.check_user_id(req.user)
        s = await self._ctx.visible(req.room, caller.id)
        if req.add:
            return await self._invite(req, s)
        if req.user == caller.id:
            if not await self._store.remove(req.room, caller.id, ban=False):
                raise not_found("not a member of this room")
            change: Literal["left", "removed"] = "left"
        else:
            rules.check_may_remove(s, caller.id)
            if not await self._store.remove(req.room, req.user, ban=True):
                raise not_found("not a member of this room")
            change = "removed"
            event(log, "member removed", room=req.room, user=req.user, by=caller.id)
        await self._ctx.notify(subjects.state_subject(req.room),
                               MemberNotice(room=req.room, user=req.user, event=change))
        s = await self._ctx.standing(req.room, caller.id)
        return RoomReply(room=s.room.view(member_count=await self._store.member_count(req.room)))

    async def _invite(self, req: MemberChange, s: Standing) -> RoomReply:
        caller = req.caller
        rules.check_may_invite(s, caller.id)
        found = await self._ctx.lookup(ids=[req.user])
        if not found or found[0].id != req.user:
            raise not_found("unknown user")
        if await self._store.is_blocked(req.user, caller.id):
            raise forbidden("this user does not accept your invitations")
        target = await self._ctx.standing(req.room, req.user)
        rules.check_may_reinvite(target, caller.id)
        if not await self._store.invite(req.room, found[0], lift_ban=target.banned):
            raise forbidden("the user was removed, or the room archived, meanwhile")
        return RoomReply(room=await self._ctx.full_view(req.room, caller.id))

    async def dm(self, req: DmRequest) -> RoomReply:
        """The DM room of the caller and a user named by id or name, created on first ask."""
        caller = req.caller
        rules.check_user_ref(req.user)
        if req.user == caller.id:
            raise rules.bad_request("no direct messages with yourself")
        found = await self._ctx.lookup(ids=[req.user], names=[req.user])
        if not found:
            raise not_found("unknown user")
        peer = found[0]
        if peer.id == caller.id:
            raise rules.bad_request("no direct messages with yourself")
        if await self._store.is_blocked(peer.id, caller.id):
            raise forbidden("this user does not accept your messages")
        room = rules.dm_room_id(caller.id, peer.id)
        created = await self._store.create(
            room, rules.dm_name(caller.name, peer.name), visibility="private", owner=None,
            password_hash=None, members=[caller, peer], dm_users=sorted((caller.id, peer.id)))
        if created:
            event(log, "dm created", room=room)
        else:
            # Whoever asks again is (back) in the room; the other's choice to leave stands.
            await self._store.invite(room, caller, lift_ban=False)
        return RoomReply(room=await self._ctx.full_view(room, caller.id), created=created)
