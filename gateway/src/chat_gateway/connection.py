"""One client socket's output: who it is, which rooms it is in, and how bytes reach it.

What the socket may do is :mod:`.session`'s; ``rooms`` and the blocked set
are read here by the fan-out and changed by :mod:`.rooms` (``rooms``) and
the blocks notices (:mod:`.sockets`) only.

Events are written as pre-built frames straight to the socket's transport
(see :mod:`.wsframe`). That bypasses the ASGI ``send`` but not its ordering:
uvicorn's sans-I/O protocol also writes its own frames (pong, close)
synchronously to the same transport, so frames never interleave. The
transport's write buffer is the per-socket backlog the slow-consumer limit
watches; :class:`~.overload.OutboundBudget` sums it over all sockets.

A slow consumer (its buffer past the limit, or among the largest when the
gateway's budget is exceeded) gets a 1013 close frame queued behind what it
has not read yet, then a FIN once that is out; it has
``slow_close_timeout`` seconds to read it all before the socket is aborted.

Writes are coalesced: frames for a socket collect during one event-loop
iteration and go out in one ``write`` at its end, so a socket that receives
several events per iteration (any busy room under load) costs one syscall,
not one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

from starlette.websockets import WebSocket

from chat_contract.errors import CloseCode
from chat_contract.events import User
from chat_kit import metrics
from chat_kit.http import RAW_SEND
from chat_kit.logs import event

from .overload import OutboundBudget
from .wsframe import text_frame

log = logging.getLogger("chat_gateway.connection")


def _raw_protocol(ws: WebSocket) -> Any:
    """uvicorn's websockets-sansio protocol behind this socket, if that is what runs."""
    proto = getattr(ws.scope.get(RAW_SEND), "__self__", None)
    if proto is not None and hasattr(proto, "transport") and hasattr(proto, "close_sent"):
        return proto
    return None


class _Flusher:
    """Writes every socket's collected frames once per loop iteration."""

    def __init__(self) -> None:
        self.dirty: list[Connection] = []

    def add(self, conn: Connection) -> None:
        if not self.dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self.dirty.append(conn)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()


_flusher = _Flusher()
_NONE: frozenset[str] = frozenset()


class Connection:
    __slots__ = ("ws", "session", "user", "rooms", "closed", "max_buffer", "_proto", "_queue",
                 "_writer", "remote", "_out", "blocked", "blocks_seen", "budget",
                 "slow_close_timeout", "sid")

    def __init__(self, ws: WebSocket, session: str, user: User, max_buffer: int,
                 rooms: set[str] | None = None, budget: OutboundBudget | None = None,
                 slow_close_timeout: float = 10.0) -> None:
        self.ws = ws
        self.session = session
        # The login session of the token it authenticated with (its ``sid``
        # claim): what a logout closes (sockets.Sockets, revocation).
        self.sid: str | None = None
        self.user = user
        # The rooms this socket is in: changed by rooms.RoomHub only.
        self.rooms: set[str] = set() if rooms is None else rooms
        # User ids whose events this socket is not delivered (the user's blocks):
        # set at each join from the access reply, replaced by BlocksNotice.
        # Never changed in place: most sockets share the one empty set.
        self.blocked: frozenset[str] = _NONE
        # BlocksNotices applied: a fetched (older) set must not undo one.
        self.blocks_seen = 0
        self.closed = False
        self.max_buffer = max_buffer
        self.budget = budget  # the gateway's outbound budget (None: none)
        self.slow_close_timeout = slow_close_timeout
        self.remote = ws.client.host if ws.client else ""
        self._proto = _raw_protocol(ws)
        self._out: list[bytes] | None = None  # frames waiting for this iteration's flush
        # Without a raw transport (another ASGI server), an ordered queue and
        # one writer task keep the same ordering at some cost.
        self._queue: asyncio.Queue[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None
        if self._proto is None:
            self._queue = asyncio.Queue()
            self._writer = asyncio.create_task(self._drain_queue())

    def blocks_notice(self, blocked: list[str]) -> None:
        """The user's blocked set changed (a BlocksNotice): newest, always applies."""
        self.blocked = frozenset(blocked) if blocked else _NONE
        self.blocks_seen += 1

    def blocks_fetched(self, blocked: list[str], seen: int) -> None:
        """A blocked set asked for when ``blocks_seen`` was ``seen`` (a join's access
        reply, a refresh): applies unless a notice arrived meanwhile."""
        if self.blocks_seen == seen:
            self.blocked = frozenset(blocked) if blocked else _NONE

    def write_frame(self, frame: bytes) -> bool:
        """Write one pre-built frame now; False if the socket is gone or closed as slow."""
        if self.closed:
            return False
        proto = self._proto
        if proto is None:
            assert self._queue is not None
            self._queue.put_nowait(frame)
            return True
        out = self._out
        if out is None:
            self._out = [frame]
            _flusher.add(self)
        else:
            out.append(frame)
        return True

    def flush(self) -> None:
        out, self._out = self._out, None
        proto = self._proto
        if not out or self.closed or proto is None:
            return
        transport = proto.transport
        if proto.close_sent or transport.is_closing():
            return  # never write data after a close frame
        if transport.get_write_buffer_size() > self.max_buffer:
            self.close_slow()
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.budget is not None:
            self.budget.wrote(self, transport.get_write_buffer_size())

    def buffered(self) -> int:
        """Bytes written to the transport and not yet taken by the kernel."""
        proto = self._proto
        return 0 if proto is None else int(proto.transport.get_write_buffer_size())

    def send(self, payload: bytes) -> bool:
        ok = self.write_frame(text_frame(payload))
        if ok:
            metrics.WS_MESSAGES_OUT.inc()
        return ok

    def close_slow(self, why: str = "slow consumer") -> None:
        """Close a client that reads too slowly (``why``: its own buffer limit, or
        the gateway's outbound budget): 1013 after what it has buffered."""
        if self.closed:
            return
        metrics.WS_DROPPED.labels("slow_consumer" if why == "slow consumer"
                                  else why.replace(" ", "_")).inc()
        event(log, "slow consumer closed", logging.WARNING, session=self.session,
              user=self.user.id, reason=why, buffered=self.buffered())
        self.closed = True
        self._out = None
        proto = self._proto
        if proto is not None and not proto.close_sent:
            transport = proto.transport
            # The close frame queues behind what is buffered, so a client that
            # reads again gets its data and then the 1013.
            payload = struct.pack("!H", CloseCode.TRY_AGAIN_LATER) + why.encode()[:120]
            transport.write(bytes((0x88, len(payload))) + payload)
            proto.close_sent = True  # uvicorn writes nothing more, and drops what it reads
            if proto.read_paused:  # keep reading: unread input would make the close a reset
                proto.read_paused = False
                transport.resume_reading()
            # A FIN once the buffer is out (half-close: the client's close reply
            # and EOF then end the socket); the abort bounds how long a client
            # that never reads can hold the socket and its buffer.
            if transport.can_write_eof():
                transport.write_eof()
            asyncio.get_running_loop().call_later(self.slow_close_timeout, transport.abort)

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.flush()  # what was sent before the close goes out before it
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:120])

    async def _drain_queue(self) -> None:
        assert self._queue is not None
        while True:
            frame = await self._queue.get()
            # Strip our framing: the library frames it again.
            n = frame[1] & 0x7F
            start = 2 if n < 126 else (4 if n == 126 else 10)
            try:
                await self.ws.send_text(frame[start:].decode())
            except Exception:
                return

    def stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
