"""Wiring of one gateway node: builds every part, hands each the narrow
pieces it needs, lists the routes, and runs the drain order on SIGTERM.

Nothing else in the package knows this module: handlers, the endpoint and
the REST routes are given their interfaces here.

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

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from chat_contract import rpc, subjects
from chat_contract.bus import (
    BlocksReply,
    BlocksRequest,
    Empty,
    HistoryReply,
    HistoryRequest,
    RoomRef,
    RoomView,
)
from chat_contract.errors import CloseCode
from chat_contract.events import User
from chat_kit import stream
from chat_kit.logs import event
from chat_kit.runtime import Runtime

from . import apidocs, attachments, rest, rest_rooms, server_api
from .config import GatewaySettings
from .endpoint import Endpoint
from .handlers import Handlers, JoinOptions
from .overload import ConnectionCaps, OutboundBudget
from .presence import Presence
from .relay import Relay
from .revocation import Revocations
from .rooms import RoomHub
from .services import Services
from .session import Rules
from .sockets import Sockets
from .tokens import TokenVerifier
from .usercap import SessionRegistry

log = logging.getLogger("chat_gateway")
STATIC = Path(__file__).parent / "static"
# The JavaScript client (clients/js/chat-client.js) the page imports: packaged
# into static/ by the wheel (gateway/pyproject.toml), read from the repository
# in a source checkout.
CLIENT_JS = next((p for p in (STATIC / "chat-client.js",
                              Path(__file__).resolve().parents[3] / "clients/js/chat-client.js")
                  if p.is_file()), STATIC / "chat-client.js")
# How often the reconnect counter is looked at (and a failed reconcile retried).
RECONCILE_TICK = 1.0


def session_rules(s: GatewaySettings) -> Rules:
    return Rules(node=s.node_id, heartbeat=s.heartbeat, auth_timeout=s.auth_timeout,
                 max_rooms=s.max_rooms, send_rate=s.send_rate, send_burst=s.send_burst,
                 abuse_strikes=s.abuse_strikes, abuse_window=s.abuse_window,
                 join_rate=s.join_rate, join_burst=s.join_burst)


class App:
    """The runtime's component (chat_kit.runtime.Component); one per process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.sockets = Sockets()
        self.draining = False
        self._presence: Presence | None = None
        self._hub: RoomHub | None = None
        self._cap: SessionRegistry | None = None
        self._routes: list[BaseRoute] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stream_ok = False
        self._server_listener: server_api.ServerListener | None = None

    def is_draining(self) -> bool:
        return self.draining

    async def start(self, rt: Runtime) -> None:
        s = self.settings
        timeout = s.common.request_timeout
        js = rt.nc.jetstream(timeout=timeout)
        # history-service creates the CHAT stream; until it exists this node
        # is not ready (sends would answer unavailable) and keeps looking.
        self._tasks.append(asyncio.create_task(self._wait_for_stream(js)))
        rt.checks.append(lambda: self._stream_ok)
        services = Services(rt.nc, js, timeout)

        async def history(req: HistoryRequest) -> HistoryReply:
            return await services.request(rpc.HISTORY_MESSAGES, req)

        async def jwks() -> list[dict[str, Any]]:
            return (await services.request(rpc.AUTH_JWKS, Empty())).keys

        presence = Presence(rt.nc, js, s.node_id, timeout)
        await presence.start()
        hub = RoomHub(rt.nc, Relay(js, history), presence, layout=s.stream,
                      linger=s.room_linger)
        # The denylist (logout, password change…): refused tokens, closed sockets.
        # Not ready until it is loaded: a revoked token must never pass here.
        revocations = Revocations(js)
        revocations.listener = self.sockets
        self.sockets.is_revoked = revocations.socket_revoked
        self._tasks.append(asyncio.create_task(revocations.run(rt.nc)))
        rt.checks.append(lambda: revocations.loaded)
        verifier = TokenVerifier(s.jwt_issuer, s.jwt_audience, jwks,
                                 revoked=revocations.refusal)
        await verifier.start()
        cap = SessionRegistry(rt.nc, s.node_id, s.max_connections_per_user, timeout)
        await cap.start()
        handlers = Handlers(services, hub, presence,
                            JoinOptions(s.auto_create_rooms, s.room_member_cap,
                                        s.joins_in_flight))
        endpoint = Endpoint(session_rules(s), s.outbound_buffer_bytes, verifier, handlers, hub,
                            self.sockets, cap, self.is_draining,
                            caps=ConnectionCaps(s.max_connections_per_address,
                                                s.max_connections),
                            budget=OutboundBudget(s.outbound_budget_bytes),
                            slow_close_timeout=s.slow_close_timeout)
        ctx = rest.RestContext(services=services, verify=verifier.verify_async,
                               online=presence.members)
        self._presence, self._hub, self._cap = presence, hub, cap

        async def index(_: Request) -> Response:
            return FileResponse(STATIC / "index.html")

        async def client_js(_: Request) -> Response:
            return FileResponse(CLIENT_JS, media_type="text/javascript")

        files = attachments.Attachments(ctx, js, attachments.UploadLimits(
            max_bytes=s.attachment_max_bytes, thumb_px=s.attachment_thumb_px,
            max_pixels=s.attachment_max_pixels))
        self._routes = [WebSocketRoute("/ws", endpoint.serve), Route("/", index, methods=["GET"]),
                        Route("/chat-client.js", client_js, methods=["GET"]),
                        *rest.routes(ctx), *rest_rooms.routes(ctx),
                        *attachments.routes(ctx, files), *apidocs.routes()]
        # Rare traffic (a block or unblock), so one subscription for all users.
        await rt.nc.subscribe(subjects.BLOCKS_WILDCARD, cb=self.sockets.on_blocks)
        # The server API (README "Server API"): disconnect notices always; with
        # keys, svc.server.* and the internal listener (CHAT_SERVER_API_PORT).
        self._server_listener = await server_api.start(
            server_api.ServerApiSettings.from_env(rt.settings.host), services, rt.nc,
            self.sockets)
        self._tasks.append(asyncio.create_task(
            self._reconcile(rt.nc, hub, services, s.reconcile_interval)))
        event(log, "gateway ready", node=s.node_id)

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

    async def _reconcile(self, nc: NATS, hub: RoomHub, services: Services,
                         interval: float) -> None:
        """Re-check the held rooms' memberships and archive flags, and the local
        users' blocked sets, against history-service: right after each NATS
        reconnect (with the rooms' events stored meanwhile relayed first), and
        every ``interval`` seconds (CHAT_GATEWAY_RECONCILE_INTERVAL) — a notice
        lost without a reconnect (published by a process that died, or dropped)
        then takes effect within that bound. One request per held room and one
        per local user, one at a time."""

        async def room_view(room: str, caller: User) -> RoomView:
            return (await services.request(rpc.ROOMS_GET, RoomRef(caller=caller, room=room))).room

        async def blocks(caller: User) -> BlocksReply:
            return await services.request(rpc.ROOMS_BLOCKS, BlocksRequest(caller=caller))

        loop = asyncio.get_running_loop()
        seen = nc.stats["reconnects"]
        dirty = False
        due = loop.time() + interval
        while True:
            await asyncio.sleep(min(RECONCILE_TICK, interval))
            if nc.stats["reconnects"] != seen:
                seen, dirty = nc.stats["reconnects"], True
            periodic = loop.time() >= due
            if (dirty or periodic) and nc.is_connected:
                done = False
                try:
                    done = ((not dirty or await hub.catch_up())
                            and await hub.reconcile(room_view)
                            and await self.sockets.refresh_blocks(blocks))
                except Exception as exc:  # never let the watcher die
                    event(log, "room reconcile failed", logging.WARNING, error=repr(exc))
                if done:
                    if dirty:
                        event(log, "rooms reconciled after a NATS reconnect",
                              rooms=len(hub.rooms))
                    dirty = False
                    due = loop.time() + interval

    async def stop(self) -> None:
        self.draining = True
        for task in self._tasks:
            task.cancel()
        if self._server_listener is not None:
            await self._server_listener.stop()
        if self._presence is not None:
            # Before the sockets close: their presence entries are left to
            # expire, so clients that reconnect elsewhere do not flap.
            self._presence.drain()
        try:
            await asyncio.wait_for(
                self.sockets.close_all(CloseCode.SERVICE_RESTART, "service restart"),
                self.settings.drain_timeout)
        except TimeoutError:
            event(log, "drain timed out; remaining sockets drop with the process",
                  logging.WARNING, left=len(self.sockets))
        if self._cap is not None:
            await self._cap.close()
        if self._hub is not None:
            await self._hub.close_all()
        if self._presence is not None:
            await self._presence.stop()

    def routes(self) -> list[BaseRoute]:
        """The routes (built by start(), which the runtime calls first)."""
        return self._routes

    def server_options(self) -> dict[str, object]:
        s = self.settings
        # websockets enforces the frame size (close 1009) and the heartbeat:
        # a ping every `heartbeat` s, closed when no pong within the idle bound.
        # The client address (throttles, caps, audit) comes from X-Forwarded-For
        # only when the peer is a trusted proxy (README "Security").
        return {"ws_max_size": s.max_frame_bytes, "ws_ping_interval": float(s.heartbeat),
                "ws_ping_timeout": max(1.0, s.idle_timeout - s.heartbeat),
                "proxy_headers": True, "forwarded_allow_ips": s.trusted_proxies}
