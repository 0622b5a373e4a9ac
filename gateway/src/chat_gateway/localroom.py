"""One room this gateway holds: its subscriptions, its one member map, and the
writing of one event to its members.

A room is held while one of its sockets is here (or joining). It holds the
three subscriptions of the room — live events (``chat.live.<room>``), room
state (``chat.room.<room>.state``) and presence/typing
(``presence.<room>``) — and ONE member map: socket → floor. The floor is the
last sequence the socket already has (its join returned it); live events at
or below it are not written to it. A socket whose join is still under way is
in the map with the floor :data:`JOINING`: it already gets presence and typing
(so a joiner sees its own ``join`` presence event), and nothing sequenced or
from the room state until its join is acked. Only :mod:`.rooms` changes the
map (and ``conn.rooms`` with it).

Fan-out writes one pre-built frame to every member. Blocks are applied per
member: a member whose ``conn.blocked`` holds the user an event is about gets
nothing of it, and its next event is re-encoded with the ``prev_seq`` of its
own chain (:mod:`.chains`). Everyone else pays one truthiness test.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

import msgspec
from nats.aio.subscription import Subscription

from chat_contract import subjects
from chat_contract.events import Message, RoomEvent, System, author_of, encode
from chat_kit import metrics
from chat_kit.stream import StreamSettings

from .chains import Chains
from .clock import now_rfc3339
from .connection import Connection
from .typists import Incoming
from .wsframe import text_frame

# Events kept per room for members whose join completes while they arrive.
RECENT_EVENTS = 256
# The floor of a socket whose join is under way: above every sequence.
JOINING = 2**63


class LocalRoom:
    __slots__ = ("name", "stream", "subject", "members", "live_sub", "state_sub",
                 "presence_sub", "last_seq", "recent", "ready", "pending", "archived", "chains",
                 "removals", "repairing", "backlog", "typing", "closed", "idle_since")

    def __init__(self, name: str, layout: StreamSettings | None = None) -> None:
        self.name = name
        # Where its events are stored: one stream, or its partition's (chat_kit.stream).
        layout = layout or StreamSettings()
        self.stream = layout.stream_for_room(name)
        self.subject = layout.stored_subject(name)
        # The one member map: socket → floor (JOINING while its join is under way).
        self.members: dict[Connection, int] = {}
        self.live_sub: Subscription | None = None
        self.state_sub: Subscription | None = None
        self.presence_sub: Subscription | None = None
        self.last_seq = -1  # unknown until the first event or the first join's lookup
        # (seq, prev_seq, frame, event) of the latest events, for joins completing now
        self.recent: deque[tuple[int, int, bytes, RoomEvent]] = deque(maxlen=RECENT_EVENTS)
        self.ready = asyncio.Event()  # subscribed (or failed to): joins may go on
        self.pending = 0  # joins under way (kept by rooms.RoomHub.join alone)
        self.archived = False  # read-only: from a join's access reply or an ArchiveNotice
        self.chains: Chains[Connection] = Chains()
        # user id → removal notices seen: a join in flight checks it did not change
        self.removals: dict[str, int] = {}
        # One repair at a time: two interleaved ones could relay out of order.
        self.repairing = asyncio.Lock()
        # (seq, prev_seq, record) of live events that arrived during a gap
        # repair, relayed after it in order (relay.Relay.on_live); None: none running.
        self.backlog: list[tuple[int, int, bytes]] | None = None
        self.typing = Incoming()  # who is typing here, as relayed to the members
        self.closed = False
        self.idle_since = 0.0  # monotonic time its last member left (rooms.RoomHub.linger)

    @property
    def live_subject(self) -> str:
        return subjects.live_subject(self.name)

    def joined(self) -> list[Connection]:
        """Members whose join completed (not those still joining)."""
        return [conn for conn, floor in self.members.items() if floor != JOINING]

    def known_last_seq(self) -> int | None:
        """The last sequence relayed here, when that is the room's up-to-date
        view: held, subscribed, no gap repair under way (None otherwise: ask
        the stream). Events stored meanwhile are on their way to this room and
        reach a new member as live events above its floor."""
        if self.last_seq < 0 or self.closed or self.backlog is not None:
            return None
        return self.last_seq

    def missed_since(self, since: int) -> list[Message] | None:
        """The events after ``since`` from the replay buffer, exactly as history
        would list them — or None when it cannot say: the buffer does not
        reach back to ``since``, or an event there is not a plain new message
        (an edit, delete or reaction changes how history shows the events it
        is about; a thread reply gives its root a ``thread_info``)."""
        found: list[Message] = []
        for seq, prev_seq, _, msg in reversed(self.recent):
            if seq <= since:
                break
            if not isinstance(msg, Message) or msg.edited or msg.deleted \
                    or msg.thread is not None:
                return None
            found.append(msg)
            if prev_seq <= since:
                found.reverse()
                return found
        return [] if since >= self.last_seq else None

    def has_hole(self, floor: int) -> bool:
        """True if events above ``floor`` already left the replay buffer (a
        long join on a busy room): the join must then say ``missed_truncated``."""
        return bool(self.recent) and self.recent[0][1] > floor

    # --- fan-out ----------------------------------------------------------------------

    def relay(self, msg: RoomEvent) -> None:
        """Write one event to every member above its floor; it is now the room's last."""
        seq = msg.seq
        frame = text_frame(encode(msg))
        self.last_seq = seq
        self.recent.append((seq, msg.prev_seq, frame, msg))
        written = 0
        chains = self.chains
        owed = chains.owed
        for conn, floor in self.members.items():
            if seq > floor:
                # Only blockers, and members owed a prev_seq after a skip, pay.
                if conn.blocked or (owed and conn in owed):
                    written += _write(chains, conn, msg, frame)
                elif conn.write_frame(frame):
                    written += 1
        metrics.WS_MESSAGES_OUT.inc(written)

    def admit(self, conn: Connection, floor: int, held: int | None = None) -> None:
        """A join completed: ``conn`` is a member from ``floor`` on; replay what
        arrived above it while it was joining.

        ``held``: the last seq the client holds, when that is not ``floor`` (a
        blocker whose ``missed`` left out the room's last events): its next
        event then links to ``held``, so its chain shows no false gap.
        """
        if self.members.get(conn, JOINING) != JOINING:
            return  # a second join of the same room never doubles delivery
        self.members[conn] = floor
        self.chains.forget(conn)
        if held is not None and held != floor:
            self.chains.owed[conn] = held
        written = 0
        for seq, _, frame, msg in self.recent:
            if seq > floor:
                written += _write(self.chains, conn, msg, frame)
                self.members[conn] = seq
        metrics.WS_MESSAGES_OUT.inc(written)

    def drop(self, conn: Connection) -> None:
        self.members.pop(conn, None)
        self.chains.forget(conn)

    def tell_joined(self, payload: bytes, about: str | None = None) -> None:
        """Write an unsequenced event (read, system) to the members whose join
        completed, except those who blocked user ``about``."""
        frame = text_frame(payload)
        written = 0
        for conn, floor in self.members.items():
            if floor == JOINING or (about is not None and conn.blocked and about in conn.blocked):
                continue
            if conn.write_frame(frame):
                written += 1
        metrics.WS_MESSAGES_OUT.inc(written)

    def tell_all(self, payload: bytes, about: str, *, skip_self: bool) -> None:
        """Write a presence or typing event about user ``about`` to every member
        (joining ones too), except those who blocked that user (and with
        ``skip_self`` that user's own sockets)."""
        frame = text_frame(payload)
        written = 0
        for conn in self.members:
            if skip_self and conn.user.id == about:
                continue
            if conn.blocked and about in conn.blocked:
                continue
            if conn.write_frame(frame):
                written += 1
        metrics.WS_MESSAGES_OUT.inc(written)

    def system(self, text: str) -> None:
        self.tell_joined(encode(System(room=self.name, text=text, ts=now_rfc3339())))


def _write(chains: Chains[Connection], conn: Connection, msg: RoomEvent, frame: bytes) -> int:
    """Deliver one event to a member that blocks someone or owes a ``prev_seq``
    (a message is about its sender, a reaction about its user)."""
    if conn.blocked and author_of(msg) in conn.blocked:
        chains.skip(conn, msg.prev_seq)
        return 0
    owed = chains.prev_for(conn, msg.prev_seq)
    if owed is not None:  # its chain skipped events: show it its own last link
        frame = text_frame(encode(msgspec.structs.replace(msg, prev_seq=owed)))
    return 1 if conn.write_frame(frame) else 0


def tell(conns: Iterable[Connection], payload: bytes) -> None:
    """Write one event to these sockets (a removal's notice to the removed)."""
    frame = text_frame(payload)
    written = 0
    for conn in conns:
        if conn.write_frame(frame):
            written += 1
    metrics.WS_MESSAGES_OUT.inc(written)
