"""Membership at this gateway: which rooms are held, and who is in them.

:class:`RoomHub` holds one :class:`~.localroom.LocalRoom` per room with a
socket here and is the only place a socket enters or leaves one:

- :meth:`RoomHub.join` is a whole join: it holds the room (subscribing its
  live, state and presence subjects on first use), asks the caller's
  ``admit`` (access, last sequence, missed events), writes the presence
  entry, checks no removal arrived meanwhile, then — without awaiting —
  lets the caller queue the ack and admits the socket with its floor, so
  no event slips between the ack and the replay.
- :meth:`RoomHub.leave` / :meth:`RoomHub.leave_all` undo a join: the member
  map, ``conn.rooms``, the presence entry, and the subscriptions once the
  last member is gone and no join is under way.
- Room state (``chat.room.<room>.state``, from history-service): a read
  pointer is relayed as a ``read`` event, a member's removal (or leave
  elsewhere) takes that user's sockets out at once, an archive makes the
  room read-only here. :meth:`RoomHub.reconcile` re-checks memberships and
  archive flags after a NATS reconnect, as notices published meanwhile were
  lost.

Live events are :mod:`.relay`'s; presence signals :mod:`.presence`'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg

from chat_contract import subjects
from chat_contract.bus import MemberNotice, ReadNotice, RoomState, RoomView
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import ReadEvent, RoomEvent, System, User, encode
from chat_kit import bus, metrics
from chat_kit.logs import event
from chat_kit.natsclient import Client
from chat_kit.stream import StreamSettings

from .clock import now_rfc3339
from .connection import Connection
from .localroom import JOINING, LocalRoom, tell
from .presence import Presence
from .relay import Relay

log = logging.getLogger("chat_gateway.rooms")

_state_decoder: msgspec.json.Decoder[RoomState] = msgspec.json.Decoder(RoomState)

# What a removed member's sockets are told (MemberNotice.event → text);
# "gone": found missing from the membership after a reconnect, reason unknown.
GONE_TEXT = {"removed": "you were removed from the room", "left": "you left the room",
             "gone": "you are no longer a member of the room"}

# The room as history-service sees it for one caller (svc.rooms.get).
FetchRoom = Callable[[str, User], Awaitable[RoomView]]


@dataclass
class Admission:
    """What a join learnt before its socket is admitted (see :meth:`RoomHub.join`)."""

    last_seq: int
    # The floor: the last sequence the ack returns (last_seq, or the end of missed).
    floor: int
    missed: list[RoomEvent] = field(default_factory=list)
    truncated: bool = False  # missed stopped at its cap: the client pages history
    since: int | None = None
    archived: bool = False

    def held(self, blocks_someone: bool) -> int | None:
        """The last seq a blocker holds when its ``missed`` (blocked senders left
        out) ended before ``floor``; None when that is the floor."""
        if not blocks_someone or self.since is None or self.since >= self.last_seq:
            return None
        if self.truncated:
            return None
        return self.missed[-1].seq if self.missed else self.since


# A join's checks and reads, made while the room is held (see RoomHub.join).
Admit = Callable[[LocalRoom], Awaitable[Admission]]
# Called without awaiting right before the socket is admitted: queue the ack.
# Arguments: what admit found, the room's members (presence), and whether
# the replay buffer lost events above the floor.
Admitted = Callable[[Admission, list[User], bool], None]


class RoomHub:
    def __init__(self, nc: Client, relay: Relay, presence: Presence | None = None,
                 layout: StreamSettings | None = None, linger: float = 0.0) -> None:
        self.nc = nc
        self.relay = relay
        # None: no presence entries or signals (tests of the live path alone).
        self.presence = presence
        self.layout = layout or StreamSettings()
        # Seconds a room stays held (subscribed, its replay buffer current)
        # after its last member left: members who reconnect within it rejoin
        # from memory (CHAT_GATEWAY_ROOM_LINGER).
        self.linger = linger
        self.rooms: dict[str, LocalRoom] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def archived(self, name: str) -> bool:
        room = self.rooms.get(name)
        return room is not None and room.archived

    # --- join and leave -----------------------------------------------------

    async def join(self, conn: Connection, name: str, admit: Admit | None = None,
                   admitted: Admitted | None = None) -> LocalRoom:
        """Enter ``conn`` in room ``name`` (see the module docstring).

        ``admit`` raises to refuse (a socket that was in the room is then taken
        out: it was refused by a decision this node missed); without it the
        socket is admitted at the room's last sequence.
        """
        room = await self._hold(name)
        uid = conn.user.id
        was_member = conn in room.members
        try:
            removals = room.removals.get(uid, 0)
            admission = await (admit or self._admit_at_last)(room)
            if room.closed or self.rooms.get(name) is not room:
                # Closed under us (it cannot, while pending; a guard all the same).
                raise ChatError(ErrorCode.UNAVAILABLE, f"room {name} was closed; join again")
            # An ArchiveNotice may have overtaken the access reply; archiving is one-way.
            room.archived = room.archived or admission.archived
            room.members.setdefault(conn, JOINING)  # presence and typing from now on
            members = ([conn.user] if self.presence is None
                       else await self.presence.enter(conn, name))
            if room.removals.get(uid, 0) != removals:
                # Removed (or left elsewhere) while this join was under way.
                raise ChatError(ErrorCode.FORBIDDEN, f"no longer a member of room {name}")
        except BaseException as exc:
            room.pending -= 1
            refused = isinstance(exc, ChatError) and exc.code in (ErrorCode.FORBIDDEN,
                                                                  ErrorCode.NOT_FOUND)
            if refused or not was_member:
                await self.leave(conn, name)
            else:
                await self._close_if_unused(room)
            raise
        room.pending -= 1
        # From here to admit() nothing awaits: the ack is queued before any
        # event of the room, and no event can slip between the ack and the replay.
        if admitted is not None:
            admitted(admission, members, room.has_hole(admission.floor))
        conn.rooms.add(name)
        room.admit(conn, admission.floor, admission.held(bool(conn.blocked)))
        return room

    async def last_seq(self, room: LocalRoom) -> int:
        """The room's last stored sequence now (:meth:`.relay.Relay.last_seq`)."""
        return await self.relay.last_seq(room)

    async def _admit_at_last(self, room: LocalRoom) -> Admission:
        last = await self.relay.last_seq(room)
        return Admission(last_seq=last, floor=last)

    async def leave(self, conn: Connection, name: str) -> None:
        """``conn`` is out of ``name`` (a leave frame, a refused join, a closed socket)."""
        conn.rooms.discard(name)
        room = self.rooms.get(name)
        if room is None:
            return
        room.drop(conn)
        await self._exit_presence(conn, room)
        await self._close_if_unused(room)

    async def leave_all(self, conn: Connection) -> None:
        """A closed socket leaves every room it was in."""
        for name in list(conn.rooms):
            await self.leave(conn, name)

    async def _exit_presence(self, conn: Connection, room: LocalRoom) -> None:
        if self.presence is not None:
            uid = conn.user.id
            await self.presence.exit(conn, room.name,
                                     any(c.user.id == uid for c in room.members))

    # --- holding rooms ------------------------------------------------------

    async def _hold(self, name: str) -> LocalRoom:
        """The room, subscribed, with one more join pending on it."""
        while (room := self.rooms.get(name)) is not None:
            room.pending += 1
            await room.ready.wait()
            if self.rooms.get(name) is room:
                return room
            room.pending -= 1  # its opener failed or it closed meanwhile: start over
        room = LocalRoom(name, self.layout)
        room.pending = 1
        self.rooms[name] = room
        try:
            room.live_sub = await self.nc.subscribe_direct(
                subjects.live_subject(name), functools.partial(self.relay.on_live, room))
            # Inline like the live events, so a removal or archive is applied
            # before any event that came after it on the connection.
            room.state_sub = await self.nc.subscribe_direct(
                subjects.state_subject(name), functools.partial(self._state_raw, room))
            if self.presence is not None:
                room.presence_sub = await self.nc.subscribe(
                    subjects.presence_subject(name), cb=self._on_signal(room),
                    pending_msgs_limit=65536)
            # The server must have the subscriptions before we read the room's
            # last sequence (or write our presence entry), or an event
            # published in between would be missed.
            await bus.sync(self.nc)
        except BaseException:
            del self.rooms[name]
            await self._unsubscribe(room)
            raise
        finally:
            room.ready.set()
        return room

    async def _close_if_unused(self, room: LocalRoom) -> None:
        if not room.members and room.pending <= 0 and room.ready.is_set():
            if self.linger > 0 and not room.closed:
                room.idle_since = time.monotonic()
                asyncio.get_running_loop().call_later(self.linger, self._linger_over, room)
                return
            await self._close(room)

    def _linger_over(self, room: LocalRoom) -> None:
        """A lingering room with nobody back for the whole linger closes — at
        once, so no join can find it between this check and the unsubscribe."""
        if (self.rooms.get(room.name) is room and not room.members and room.pending <= 0
                and time.monotonic() - room.idle_since >= self.linger * 0.99):
            del self.rooms[room.name]
            room.closed = True
            self._spawn(self._unsubscribe(room))

    async def _close(self, room: LocalRoom) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        await self._unsubscribe(room)

    @staticmethod
    async def _unsubscribe(room: LocalRoom) -> None:
        room.closed = True
        for sub in (room.live_sub, room.state_sub, room.presence_sub):
            if sub is None:
                continue
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection closing: nothing left to undo
                event(log, "unsubscribe failed", logging.DEBUG, room=room.name, error=repr(exc))
        room.live_sub = room.state_sub = room.presence_sub = None

    async def close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for room in list(self.rooms.values()):
            await self._close(room)

    async def catch_up(self) -> bool:
        """After a NATS reconnect: relay what each held room stored meanwhile."""
        return await self.relay.catch_up(list(self.rooms.values()))

    # The subscriptions' callbacks: each bound to its room, i.e. to its subject
    # (a partial: no extra coroutine per live event).

    def _on_signal(self, room: LocalRoom) -> Callable[[Msg], Awaitable[None]]:
        assert self.presence is not None
        return functools.partial(self.presence.on_signal, room)

    def _state_raw(self, room: LocalRoom, data: bytes, _headers: bytes) -> None:
        self.on_state(room, data)

    # --- room state (chat.room.<room>.state) ---------------------------------

    def on_state(self, room: LocalRoom, data: bytes) -> None:
        """One room state notice of ``room``."""
        try:
            notice = _state_decoder.decode(data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_state_event").inc()
            return
        if isinstance(notice, ReadNotice):
            room.tell_joined(encode(ReadEvent(room=room.name, user=notice.user, seq=notice.seq)),
                             about=notice.user.id)
        elif isinstance(notice, MemberNotice):
            self._evict(room, notice.user, notice.event)
        else:
            room.archived = True
            event(log, "room archived", room=room.name)
            room.system("room archived")

    async def reconcile(self, fetch: FetchRoom) -> bool:
        """Catch up on state notices lost while NATS was away (core NATS drops
        what is published during a reconnect): for every held room, ask
        history-service for its members and archive flag, and take out the
        local sockets of users who are no longer members. False if
        history-service could not answer for some room (retry later).
        """
        complete = True
        for room in list(self.rooms.values()):
            users = {conn.user.id: conn.user for conn in room.joined()}
            for user in users.values():
                try:
                    view = await fetch(room.name, user)
                except ChatError as exc:
                    if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
                        self._evict(room, user.id, "gone")  # may not even see it now
                        continue
                    complete = False
                    break
                present = {m.id for m in view.members or ()}
                for uid in users:
                    if uid not in present and uid != view.owner:
                        self._evict(room, uid, "gone")
                if view.archived and not room.archived:
                    room.archived = True
                    room.system("room archived")
                break
        return complete

    def _evict(self, room: LocalRoom, user: str, why: str) -> None:
        """Take ``user``'s sockets out of the room now; presence follows in a task.

        Synchronous up to the system event, so no event of the room reaches
        them after the notice; the rest awaits, and awaiting here could have
        this very subscription closed under its own callback. A join of the
        user under way sees the removal count change and fails.
        """
        room.removals[user] = room.removals.get(user, 0) + 1
        gone = [conn for conn in room.joined() if conn.user.id == user]
        if not gone:
            return
        for conn in gone:
            room.drop(conn)
            conn.rooms.discard(room.name)
        tell(gone, encode(System(room=room.name, text=GONE_TEXT.get(why, GONE_TEXT["left"]),
                                 ts=now_rfc3339())))
        event(log, "member evicted", room=room.name, user=user, reason=why, sockets=len(gone))
        self._spawn(self._after_evict(room, gone))

    async def _after_evict(self, room: LocalRoom, gone: list[Connection]) -> None:
        try:
            for conn in gone:
                await self._exit_presence(conn, room)
            await self._close_if_unused(room)
        except Exception as exc:
            event(log, "eviction cleanup failed", logging.WARNING, room=room.name,
                  error=repr(exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
