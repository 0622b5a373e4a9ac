"""The ``/ws`` endpoint: the I/O around a :class:`~.session.Session`.

It accepts the socket, reads frames and feeds them to the session, makes the
calls the session asks for (the token verifier, :mod:`.handlers`), writes
what the session returns and closes when it says so. Every rule is the
session's; here is only the awaiting (docs/protocol.md §3).

A bad token is answered by accepting the upgrade and closing with 4401, as
browsers cannot read an HTTP 401 on an upgrade. The same way, a socket past
the connection caps (per client address, per gateway: :mod:`.overload`) is
closed with 1013 right after the upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

from starlette.websockets import WebSocket

from chat_contract.claims import AccessClaims
from chat_contract.errors import CloseCode
from chat_kit import metrics
from chat_kit.audit import AuditLimiter

from .connection import Connection
from .handlers import Answer
from .overload import ConnectionCaps, OutboundBudget
from .session import Call, Rules, SendMessage, Session, Verify
from .sockets import Sockets

log = logging.getLogger("chat_gateway.endpoint")

class Verifier(Protocol):
    async def verify_async(self, token: str) -> AccessClaims: ...


class Calls(Protocol):
    """Makes a session's calls (:class:`~.handlers.Handlers`)."""

    async def perform(self, conn: Connection, call: Call, answer: Answer) -> None: ...


class Rooms(Protocol):
    """What the endpoint needs of the room hub."""

    def archived(self, name: str) -> bool: ...

    async def leave_all(self, conn: Connection) -> None: ...


class ConnectionCap(Protocol):
    """The per-user connection cap (:mod:`.usercap`)."""

    def opened_conn(self, conn: Connection) -> None: ...

    def closed_conn(self, conn: Connection) -> None: ...


def _token_from_upgrade(ws: WebSocket) -> str | None:
    token = ws.query_params.get("token")
    if token:
        return token
    header = ws.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


class Endpoint:
    def __init__(self, rules: Rules, outbound_buffer: int, verifier: Verifier,
                 handlers: Calls, rooms: Rooms, sockets: Sockets, cap: ConnectionCap,
                 draining: Callable[[], bool], caps: ConnectionCaps | None = None,
                 budget: OutboundBudget | None = None,
                 slow_close_timeout: float = 10.0) -> None:
        self.rules = rules
        self.outbound_buffer = outbound_buffer
        self.caps = caps or ConnectionCaps(0, 0)
        self.budget = budget
        self.slow_close_timeout = slow_close_timeout
        self._audits = AuditLimiter(window=10.0)
        self.verifier = verifier
        self.handlers = handlers
        self.rooms = rooms
        self.sockets = sockets
        self.cap = cap
        self.draining = draining

    async def serve(self, ws: WebSocket) -> None:
        """One socket, from the upgrade to its close."""
        await ws.accept()
        if self.draining():
            await ws.close(CloseCode.SERVICE_RESTART, "draining")
            return
        remote = ws.client.host if ws.client else ""
        refused = self.caps.open(remote)
        if refused is not None:
            metrics.WS_DROPPED.labels("connection_cap").inc()
            self._audits.audit(log, "connection refused", remote, remote=remote,
                               reason=refused)
            await ws.close(CloseCode.TRY_AGAIN_LATER, refused)
            return
        try:
            await self._serve(ws, remote)
        finally:
            self.caps.close(remote)

    async def _serve(self, ws: WebSocket, remote: str) -> None:
        joined: set[str] = set()
        session = Session(self.rules, "s_" + secrets.token_urlsafe(9), joined,
                          self.rooms.archived, time.monotonic(), remote=remote)
        session.connect(_token_from_upgrade(ws))
        if not await self._authenticate(ws, session):
            return
        if self.draining():  # the drain may have begun while this socket authenticated
            await ws.close(CloseCode.SERVICE_RESTART, "draining")
            return
        assert session.user is not None
        conn = Connection(ws, session.id, session.user, self.outbound_buffer, joined,
                          self.budget, self.slow_close_timeout)
        conn.sid = session.sid
        self.sockets.add(conn)
        metrics.WS_CONNECTIONS.inc()
        expiry = asyncio.create_task(self._expire(session, conn))
        try:
            self._flush(session, conn)  # welcome (and the first-frame auth's ack)
            self.cap.opened_conn(conn)
            await self._read_loop(ws, session, conn)
        finally:
            expiry.cancel()
            self.cap.closed_conn(conn)
            self.sockets.remove(conn)
            metrics.WS_CONNECTIONS.dec()
            conn.stop_writer()
            if self.budget is not None:
                self.budget.remove(conn)
            await self.rooms.leave_all(conn)

    async def _authenticate(self, ws: WebSocket, session: Session) -> bool:
        """Until the session is authenticated (True) or closed (False)."""
        while True:
            for call in session.calls_to_make():
                await self._verify(session, call)
            if session.authenticated:
                return True
            for payload in session.data_to_send():
                await ws.send_text(payload.decode())
            if session.close is not None:
                await ws.close(*session.close)
                return False
            try:
                message = await asyncio.wait_for(
                    ws.receive(), session.timeout(time.monotonic(), time.time()))
            except TimeoutError:
                session.tick(time.monotonic(), time.time())
                continue
            if message["type"] == "websocket.disconnect":
                return False
            self._feed(session, message)

    async def _verify(self, session: Session, call: Call) -> None:
        assert isinstance(call, Verify)
        try:
            claims = await self.verifier.verify_async(call.token)
        except Exception as exc:
            session.failed(call, exc, time.monotonic())
            return
        session.succeeded(call, claims)

    @staticmethod
    def _feed(session: Session, message: MutableMapping[str, Any]) -> None:
        text = message.get("text")
        if text is None:
            session.receive_binary(time.monotonic())
        else:
            session.receive_text(text, time.monotonic())

    async def _read_loop(self, ws: WebSocket, session: Session, conn: Connection) -> None:
        receive = ws.receive
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            self._feed(session, message)
            await self._make_calls(session, conn)
            if session.close is not None:
                await conn.close(*session.close)
                return
            if conn.closed:
                return

    async def _make_calls(self, session: Session, conn: Connection) -> None:
        """Write what the session has to say; make its calls, one after the other
        (only a received frame adds calls, so one pass makes them all)."""
        self._flush(session, conn)
        for call in session.calls_to_make():
            if isinstance(call, Verify):
                await self._verify(session, call)
                self._flush(session, conn)
                continue

            def answer(result: dict[str, Any], call: Call = call) -> None:
                # Written at once: a join's ack must precede the room's events.
                session.succeeded(call, result)
                self._flush(session, conn)
                if type(call) is SendMessage:
                    metrics.SEND_ACK.observe(time.monotonic() - call.received)

            try:
                await self.handlers.perform(conn, call, answer)
            except Exception as exc:
                session.failed(call, exc, time.monotonic())
                self._flush(session, conn)

    @staticmethod
    def _flush(session: Session, conn: Connection) -> None:
        for payload in session.data_to_send():
            conn.send(payload)

    async def _expire(self, session: Session, conn: Connection) -> None:
        """Close with 4401 once the token lapses unrefreshed (``auth`` moves it)."""
        while True:
            session.tick(time.monotonic(), time.time())
            if session.close is not None:
                await conn.close(*session.close)
                return
            await asyncio.sleep(min(max(session.timeout(time.monotonic(), time.time()), 0.05),
                                    60.0))
