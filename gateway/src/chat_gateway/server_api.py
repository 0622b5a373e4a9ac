"""The server API (README "Server API", docs/protocol.md §5.1): what an
integrator's backend asks of the chat, with an API key (:mod:`.server_keys`).

One method table, two ways in, the same code behind both:

- HTTP on an internal listener (``CHAT_SERVER_API_PORT``; 0, the default, is
  no listener): ``POST /v1/server/<method>`` with the JSON body, key in
  ``Authorization: Bearer <key-id>:<secret>``; errors as the REST API's
  (``{"error": {"code", "message"}}`` with §8's status).
- NATS request–reply on ``svc.server.<method>`` (chat_contract.rpc
  ``SERVER_*``), answered by every gateway in the queue group ``server``;
  key in the ``Chat-Api-Key`` header; errors in the micro error headers
  (chat_kit.bus.call turns them back into ChatError). Only the NATS role
  ``server`` (and ``admin``) may publish there.

Methods: ``publish`` (a bot's message, stored in the chat stream like any
other: seq, history, live on every gateway), ``disconnect`` (every gateway
closes the user's sockets with 4403 on ``sessions.disconnect.<user>``),
``presence``, ``rooms``, ``members``, ``disable`` (auth-service's disable:
every session ends, logins refused). On when ``CHAT_SERVER_API_KEYS_FILE``
is set; without keys nothing is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import uvicorn
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_contract import limits, rpc, subjects
from chat_contract.bus import (
    ChatRecord,
    DirectoryRequest,
    DisableRequest,
    MembersRequest,
    RoomsReply,
    RoomView,
    RosterRequest,
    ServerDisabled,
    ServerDisconnected,
    ServerDisconnectNotice,
    ServerMembers,
    ServerPresence,
    ServerPublish,
    ServerPublished,
    ServerRoomRef,
    ServerUserRef,
    UsersRequest,
)
from chat_contract.errors import ChatError, CloseCode, ErrorCode
from chat_contract.events import User, encode
from chat_contract.rooms import is_valid_room_id
from chat_kit import bus, metrics
from chat_kit.audit import AuditLimiter
from chat_kit.env import env_int, env_str
from chat_kit.logs import event
from chat_kit.runtime import uvicorn_config

from .clock import now_rfc3339
from .handlers import new_msg_id
from .rest import MAX_BODY, error_response
from .server_keys import ApiKeys, bearer
from .services import Publisher
from .sockets import Sockets, held

log = logging.getLogger("chat_gateway.server_api")

KEY_HEADER = "Chat-Api-Key"  # over NATS
DISCONNECT_REASON = "disconnected by the server"
_BOT_NAME = re.compile(limits.BOT_NAME_PATTERN)
_USER_REF = re.compile(limits.USER_REF_PATTERN)
_record_decoder = msgspec.json.Decoder(ChatRecord)
# Requests handled at once per gateway over NATS; past it the subscription waits.
CONCURRENCY = 64


@dataclass(frozen=True)
class ServerApiSettings:
    keys_file: str  # CHAT_SERVER_API_KEYS_FILE; "" = the server API is off
    port: int  # CHAT_SERVER_API_PORT; 0 = no HTTP listener (NATS only)
    host: str  # CHAT_SERVER_API_HOST; default CHAT_HOST

    @classmethod
    def from_env(cls, host: str) -> ServerApiSettings:
        return cls(keys_file=env_str("CHAT_SERVER_API_KEYS_FILE", ""),
                   port=env_int("CHAT_SERVER_API_PORT", 0, minimum=0),
                   host=env_str("CHAT_SERVER_API_HOST", host))


def bad_request(message: str) -> ChatError:
    return ChatError(ErrorCode.BAD_REQUEST, message)


def _check_room(room: str) -> None:
    if not is_valid_room_id(room):
        raise bad_request("invalid room id")


class ServerApi:
    """The methods, whatever the way in."""

    def __init__(self, keys: ApiKeys, services: Publisher, nc: NATS) -> None:
        self.keys = keys
        self.services = services
        self.nc = nc
        self._audits = AuditLimiter()  # a refused key: one line per method and reason per 10 s
        # name → (scope, request type, handler)
        self.methods: dict[str, tuple[str, type[Any], Callable[[Any], Awaitable[Any]]]] = {
            rpc.SERVER_PUBLISH.name: ("publish", ServerPublish, self.publish),
            rpc.SERVER_DISCONNECT.name: ("disconnect", ServerUserRef, self.disconnect),
            rpc.SERVER_PRESENCE.name: ("presence", ServerRoomRef, self.presence),
            rpc.SERVER_ROOMS.name: ("rooms", DirectoryRequest, self.rooms),
            rpc.SERVER_MEMBERS.name: ("rooms", ServerRoomRef, self.members),
            rpc.SERVER_DISABLE.name: ("users", ServerUserRef, self.disable),
        }

    async def call(self, method: str, key: str | None, body: bytes, via: str) -> bytes:
        """One request: the key first (401/403), then the body (400), then the work."""
        started, outcome = time.perf_counter(), "ok"
        try:
            entry = self.methods.get(method)
            if entry is None:
                raise ChatError(ErrorCode.NOT_FOUND, f"no server API method {method!r}")
            scope, request_type, handler = entry
            try:
                api_key = self.keys.authorize(key, scope)
            except ChatError as exc:
                self._audits.audit(log, "server API key refused",
                                   f"{method}:{exc.code.value}", method=method, via=via,
                                   reason=exc.code.value)
                raise
            try:
                payload = msgspec.json.decode(body or b"{}", type=request_type)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise bad_request(f"bad body: {exc}") from None
            reply = await handler(payload)
            event(log, "server API call", method=method, via=via, key=api_key.id)
            return msgspec.json.encode(reply)
        except ChatError as exc:
            outcome = exc.code.value
            raise
        finally:
            metrics.SERVICE_REQUESTS.labels("server", method, outcome).inc()
            metrics.SERVICE_LATENCY.labels("server", method).observe(
                time.perf_counter() - started)

    # --- the methods ----------------------------------------------------------

    async def _room(self, room: str) -> RoomView:
        _check_room(room)
        return (await self.services.request(rpc.ROOMS_ROSTER, RosterRequest(room=room))).room

    async def publish(self, req: ServerPublish) -> ServerPublished:
        if not _BOT_NAME.fullmatch(req.as_name):
            raise bad_request(f"as: a bot name must match {limits.BOT_NAME_PATTERN}")
        if not req.text.strip():
            raise bad_request("text: empty")
        if len(req.text) > limits.TEXT_MAX_CHARS:
            raise ChatError(ErrorCode.TOO_LARGE, f"text over {limits.TEXT_MAX_CHARS} characters")
        if req.client_msg_id is not None and not (
                0 < len(req.client_msg_id) <= limits.CLIENT_MSG_ID_MAX):
            raise bad_request("client_msg_id: 1 to "
                              f"{limits.CLIENT_MSG_ID_MAX} characters")
        room = await self._room(req.room)  # unknown → not_found
        if room.archived:
            raise ChatError(ErrorCode.FORBIDDEN, "room is archived")
        sender = User(id=limits.BOT_ID_PREFIX + req.as_name, name=req.as_name)
        record = ChatRecord(room=req.room, msg_id=new_msg_id(), sender=sender,
                            ts=now_rfc3339(), text=req.text)
        headers = ({subjects.HDR_MSG_ID: f"{sender.id}:{req.client_msg_id}"}
                   if req.client_msg_id else None)
        ack = await self.services.publish(subjects.room_subject(req.room), encode(record),
                                          headers)
        if ack.duplicate:  # the same client_msg_id within the window: the original
            try:
                stored = await self.services.stored(ack.stream, ack.seq)
            except NotFoundError:
                raise ChatError(ErrorCode.CONFLICT, "that message is gone") from None
            record = _record_decoder.decode(stored.data or b"")
            if (record.room, record.text) != (req.room, req.text):
                raise ChatError(ErrorCode.CONFLICT,
                                "client_msg_id already used for another message")
        return ServerPublished(room=req.room, msg_id=record.msg_id, seq=ack.seq, ts=record.ts,
                               sender=record.sender)

    async def _user(self, ref: str) -> User:
        if not _USER_REF.fullmatch(ref):
            raise bad_request("user: a user id or name")
        found = (await self.services.request(rpc.AUTH_USERS,
                                             UsersRequest(ids=[ref], names=[ref]))).users
        if not found:
            raise ChatError(ErrorCode.NOT_FOUND, "no such user")
        return found[0]

    async def disconnect(self, req: ServerUserRef) -> ServerDisconnected:
        user = await self._user(req.user)
        if not self.nc.is_connected:
            raise ChatError(ErrorCode.UNAVAILABLE, "message bus unavailable")
        notice = ServerDisconnectNotice(user=user.id)
        await self.nc.publish(f"{subjects.SESSION_DISCONNECT_PREFIX}.{user.id}",
                              msgspec.json.encode(notice))
        await self.nc.flush()
        return ServerDisconnected(user=user)

    async def presence(self, req: ServerRoomRef) -> ServerPresence:
        await self._room(req.room)
        reply = await self.services.request(rpc.PRESENCE_MEMBERS, MembersRequest(room=req.room))
        return ServerPresence(room=req.room, users=reply.members)

    async def rooms(self, req: DirectoryRequest) -> RoomsReply:
        return await self.services.request(rpc.ROOMS_DIRECTORY, req)

    async def members(self, req: ServerRoomRef) -> ServerMembers:
        room = await self._room(req.room)
        members = room.members or []
        with contextlib.suppress(ChatError):  # presence down: everyone shows offline
            here = {u.id for u in (await self.services.request(
                rpc.PRESENCE_MEMBERS, MembersRequest(room=req.room))).members}
            for m in members:
                m.online = m.id in here
        return ServerMembers(room=req.room, members=members)

    async def disable(self, req: ServerUserRef) -> ServerDisabled:
        user = await self._user(req.user)
        reply = await self.services.request(rpc.AUTH_DISABLE,
                                            DisableRequest(name=user.name, disabled=True))
        return ServerDisabled(user=reply.user, disabled=reply.disabled, sessions=reply.sessions)

    # --- NATS -----------------------------------------------------------------

    async def serve_nats(self) -> None:
        """Answer ``svc.server.*`` in the queue group ``server``."""
        slots = asyncio.Semaphore(CONCURRENCY)
        running: set[asyncio.Task[None]] = set()

        async def on_request(msg: Msg) -> None:
            await slots.acquire()
            task = asyncio.create_task(self._answer(msg))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())

        await self.nc.subscribe(subjects.SERVER_WILDCARD, queue=subjects.SERVER_QUEUE,
                                cb=on_request)

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        method = msg.subject.rsplit(".", 1)[-1]
        key = (msg.headers or {}).get(KEY_HEADER)
        try:
            data = await self.call(method, key, msg.data, "nats")
            await self.nc.publish(msg.reply, data)
        except ChatError as exc:
            headers = {bus.ERROR_CODE_HEADER: exc.code.value, bus.ERROR_HEADER: exc.message}
            if exc.retry_after is not None:
                headers[bus.RETRY_AFTER_HEADER] = f"{exc.retry_after:.0f}"
            await self.nc.publish(msg.reply, b"", headers=headers)
        except Exception:
            log.exception("server API call failed", extra={"fields": {"method": method}})
            await self.nc.publish(msg.reply, b"", headers={
                bus.ERROR_CODE_HEADER: ErrorCode.INTERNAL.value,
                bus.ERROR_HEADER: "internal error"})

    # --- HTTP -----------------------------------------------------------------

    def routes(self) -> list[Route]:
        async def endpoint(request: Request) -> Response:
            try:
                body = await _read_body(request)
                data = await self.call(request.path_params["method"],
                                       bearer(request.headers.get("authorization")), body,
                                       "http")
            except ChatError as exc:
                return error_response(exc)
            except Exception:
                log.exception("server API call failed")
                return error_response(ChatError(ErrorCode.INTERNAL, "internal error"))
            return Response(data, media_type="application/json")

        return [Route("/v1/server/{method}", endpoint, methods=["POST"])]


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ChatError(ErrorCode.TOO_LARGE, "body too large")
        chunks.append(chunk)
    return b"".join(chunks)


class Disconnects:
    """Closes this gateway's sockets of a user on ``sessions.disconnect.<user>``."""

    def __init__(self, sockets: Sockets) -> None:
        self.sockets = sockets
        self._closing: set[asyncio.Task[None]] = set()

    async def on_notice(self, msg: Msg) -> None:
        try:
            notice = msgspec.json.decode(msg.data, type=ServerDisconnectNotice)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        conns = [c for c in held(self.sockets.by_user, notice.user) if not c.closed]
        if not conns:
            return
        metrics.WS_DROPPED.labels("server_disconnect").inc(len(conns))
        event(log, "sockets disconnected by the server API", user=notice.user,
              count=len(conns))
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close(CloseCode.FORBIDDEN, notice.reason[:100])


class ServerListener:
    """The internal HTTP listener (a second uvicorn server in the process)."""

    def __init__(self, api: ServerApi, host: str, port: int) -> None:
        app = Starlette(routes=api.routes())
        self.server = uvicorn.Server(uvicorn_config(app, host, port))
        # Signals are the main server's (chat_kit.runtime): this one stops with the App.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():  # the port is taken: say so, stop the start
                self._task.result()
                raise OSError("server API listener failed to start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


async def start(settings: ServerApiSettings, services: Publisher, nc: NATS,
                sockets: Sockets) -> ServerListener | None:
    """Every gateway closes disconnected users' sockets; with keys, it also
    answers the API over NATS and, with a port, over HTTP."""
    disconnects = Disconnects(sockets)
    await nc.subscribe(subjects.SESSION_DISCONNECT_WILDCARD, cb=disconnects.on_notice)
    if not settings.keys_file:
        return None
    api = ServerApi(ApiKeys.load(settings.keys_file), services, nc)
    await api.serve_nats()
    await bus.sync(nc)
    listener = None
    if settings.port:
        listener = ServerListener(api, settings.host, settings.port)
        await listener.start()
    event(log, "server API on", keys=len(api.keys), port=settings.port or None,
          nats=subjects.SERVER_WILDCARD)
    return listener
