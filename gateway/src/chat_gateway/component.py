"""Wiring of one gateway node, and its drain order on SIGTERM.

Drain (docs/protocol.md §3.5.6): readiness already fails (the runtime sets
``stopping`` first), new sockets are refused with 1012, open ones are closed
with 1012 so clients reconnect through the load balancer, then the runtime
drains NATS. No acked message can be lost: acks are sent only after
JetStream stored the message.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from chat_contract import subjects
from chat_contract.bus import (
    BlocksNotice,
    BlocksReply,
    BlocksRequest,
    Empty,
    HistoryReply,
    HistoryRequest,
    JwksReply,
    RoomRef,
    RoomReply,
    RoomView,
)
from chat_contract.errors import ChatError, CloseCode
from chat_contract.events import User
from chat_kit import bus, metrics, stream
from chat_kit.logs import event
from chat_kit.runtime import Runtime

from . import endpoint, rest, rest_rooms
from .config import GatewaySettings
from .connection import Connection
from .presence import PresenceHub
from .rooms import RoomHub
from .sessions import SessionRegistry
from .tokens import TokenVerifier

log = logging.getLogger("chat_gateway")
STATIC = Path(__file__).parent / "static"
# How often the reconnect counter is looked at (and a failed reconcile retried).
RECONCILE_INTERVAL = 1.0
_blocks_decoder = msgspec.json.Decoder(BlocksNotice)


class Gateway:
    """Everything a request handler needs; one per process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.connections: set[Connection] = set()
        # user id → that user's sockets here: where a BlocksNotice applies.
        self.by_user: dict[str, set[Connection]] = {}
        self.draining = False
        self._rt: Runtime | None = None
        self._hub: RoomHub | None = None
        self._presence: PresenceHub | None = None
        self._verifier: TokenVerifier | None = None
        self._sessions: SessionRegistry | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._stream_waiter: asyncio.Task[None] | None = None
        self._stream_ok = False

    def is_draining(self) -> bool:
        return self.draining

    def add_connection(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.by_user.setdefault(conn.user.id, set()).add(conn)

    def remove_connection(self, conn: Connection) -> None:
        self.connections.discard(conn)
        mine = self.by_user.get(conn.user.id)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self.by_user[conn.user.id]

    async def _on_blocks(self, msg: Msg) -> None:
        """A user's blocked set changed: every local socket of theirs filters by it."""
        try:
            notice = _blocks_decoder.decode(msg.data)
        except msgspec.DecodeError:
            metrics.WS_DROPPED.labels("bad_blocks_event").inc()
            return
        for conn in self.by_user.get(notice.user, ()):
            conn.blocks_notice(notice.blocked)

    async def _evicted(self, conn: Connection, room: str) -> None:
        """A removal took ``conn`` out of ``room``: the rest of a leave."""
        await self.presence.leave(conn, room)

    # Set in start(); properties keep the handlers free of Optional checks.
    @property
    def nc(self) -> NATS:
        assert self._rt is not None
        return self._rt.nc

    @property
    def js(self) -> JetStreamContext:
        return self.hub.js

    @property
    def hub(self) -> RoomHub:
        assert self._hub is not None
        return self._hub

    @property
    def sessions(self) -> SessionRegistry:
        assert self._sessions is not None
        return self._sessions

    @property
    def presence(self) -> PresenceHub:
        assert self._presence is not None
        return self._presence

    @property
    def verifier(self) -> TokenVerifier:
        assert self._verifier is not None
        return self._verifier

    async def _fetch_jwks(self) -> list[dict[str, Any]]:
        reply = await bus.call(self.nc, subjects.AUTH_JWKS, Empty(), JwksReply,
                               self.settings.common.request_timeout)
        return reply.keys

    async def start(self, rt: Runtime) -> None:
        self._rt = rt
        js = rt.nc.jetstream(timeout=self.settings.common.request_timeout)
        # history-service creates the CHAT stream; until it exists this node
        # is not ready (sends would answer unavailable) and keeps looking.
        self._stream_waiter = asyncio.create_task(self._wait_for_stream(js))
        rt.checks.append(lambda: self._stream_ok)
        self._hub = RoomHub(rt.nc, js, self._evicted, self._fetch_history,
                            layout=self.settings.stream)
        self._presence = PresenceHub(rt.nc, js, self.settings.node_id,
                                     self.settings.common.request_timeout)
        await self._presence.start()
        self._verifier = TokenVerifier(self.settings.jwt_issuer, self.settings.jwt_audience,
                                       self._fetch_jwks)
        await self._verifier.start()
        s = self.settings
        self._sessions = SessionRegistry(rt.nc, js, s.node_id, s.max_connections_per_user,
                                         s.session_ttl, s.common.request_timeout)
        await self._sessions.start()
        # Rare traffic (a block or unblock), so one subscription for all users.
        await rt.nc.subscribe(subjects.BLOCKS_WILDCARD, cb=self._on_blocks)
        self._reconciler = asyncio.create_task(self._reconcile_after_reconnects(rt.nc))
        event(log, "gateway ready", node=self.settings.node_id)

    async def _wait_for_stream(self, js: JetStreamContext) -> None:
        """Look the CHAT stream up (never create it) until it exists, with backoff."""
        delay, told = 0.1, False
        while True:
            try:
                self._stream_ok = await stream.stream_exists(js, self.settings.stream)
            except Exception as exc:  # NATS away or JetStream not answering yet
                event(log, "CHAT stream lookup failed", logging.DEBUG, error=repr(exc))
            if self._stream_ok:
                if told:
                    event(log, "CHAT stream found")
                return
            if not told:
                event(log, "CHAT stream missing; not ready until history-service creates it",
                      logging.WARNING)
                told = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _fetch_history(self, req: HistoryRequest) -> HistoryReply:
        """A page of stored history: for what aged out of the stream."""
        return await bus.call(self.nc, subjects.HISTORY_MESSAGES, req, HistoryReply,
                              self.settings.common.request_timeout)

    async def _reconcile_after_reconnects(self, nc: NATS) -> None:
        """After each NATS reconnect, relay the open rooms' events and re-check
        their memberships and archive flags: live events and state notices
        published meanwhile were lost."""
        seen = nc.stats["reconnects"]
        dirty = False
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            if nc.stats["reconnects"] != seen:
                seen, dirty = nc.stats["reconnects"], True
            if dirty and nc.is_connected:
                try:
                    dirty = not (await self.hub.catch_up()
                                 and await self.hub.reconcile(self._room_view)
                                 and await self._refresh_blocks())
                except Exception as exc:  # never let the watcher die
                    event(log, "room reconcile failed", logging.WARNING, error=repr(exc))
                if not dirty:
                    event(log, "rooms reconciled after a NATS reconnect", rooms=len(self.hub.rooms))

    async def _refresh_blocks(self) -> bool:
        """Local users' blocked sets, as BlocksNotices lost meanwhile left them."""
        for conns in list(self.by_user.values()):
            if not conns:
                continue
            first = next(iter(conns))
            seen = {conn: conn.blocks_seen for conn in conns}
            try:
                reply = await bus.call(self.nc, subjects.ROOMS_BLOCKS,
                                       BlocksRequest(caller=first.user), BlocksReply,
                                       self.settings.common.request_timeout)
            except ChatError:
                return False
            for conn, before in seen.items():
                conn.blocks_fetched(reply.blocked, before)
        return True

    async def _room_view(self, room: str, caller: User) -> RoomView:
        reply = await bus.call(self.nc, subjects.ROOMS_GET, RoomRef(caller=caller, room=room),
                               RoomReply, self.settings.common.request_timeout)
        return reply.room

    async def stop(self) -> None:
        self.draining = True
        for task in (self._reconciler, self._stream_waiter):
            if task is not None:
                task.cancel()
        if self._presence is not None:
            # Before the sockets close: their presence entries are left to
            # expire, so clients that reconnect elsewhere do not flap.
            self._presence.draining = True
        try:
            await asyncio.wait_for(
                endpoint.close_all(self, CloseCode.SERVICE_RESTART, "service restart"),
                self.settings.drain_timeout)
        except TimeoutError:
            event(log, "drain timed out; remaining sockets drop with the process",
                  logging.WARNING, left=len(self.connections))
        if self._sessions is not None:
            await self._sessions.close()
        if self._hub is not None:
            await self._hub.close_all()
        if self._presence is not None:
            await self._presence.stop()

    def routes(self) -> list[BaseRoute]:
        async def ws(websocket: WebSocket) -> None:
            await endpoint.ws_endpoint(self, websocket)

        async def index(_: Request) -> Response:
            return FileResponse(STATIC / "index.html")

        return [WebSocketRoute("/ws", ws), Route("/", index, methods=["GET"]), *rest.routes(self),
                *rest_rooms.routes(self)]

    def server_options(self) -> dict[str, object]:
        s = self.settings
        # websockets enforces the frame size (close 1009) and the heartbeat:
        # a ping every `heartbeat` s, closed when no pong within the idle bound.
        return {"ws_max_size": s.max_frame_bytes, "ws_ping_interval": float(s.heartbeat),
                "ws_ping_timeout": max(1.0, s.idle_timeout - s.heartbeat)}
