"""The ``/ws`` endpoint: authenticate, then read frames until the socket ends.

Tokens come from ``?token=``, ``Authorization: Bearer`` or a first ``auth``
frame within the auth timeout (docs/protocol.md §3.1). A bad token is answered by
accepting the upgrade and closing with 4401, as browsers cannot read an HTTP
401 on an upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from chat_contract import frames
from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, CloseCode, ErrorCode
from chat_contract.events import Error, User, Welcome, encode, encode_ack
from chat_kit import metrics
from chat_kit.logs import audit, event

from . import handlers
from .connection import Connection
from .limits import StrikeCounter, TokenBucket

if TYPE_CHECKING:
    from .component import Gateway

log = logging.getLogger("chat_gateway.endpoint")


def _token_from_upgrade(ws: WebSocket) -> str | None:
    token = ws.query_params.get("token")
    if token:
        return token
    header = ws.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


async def _first_frame_token(gw: Gateway, ws: WebSocket) -> tuple[str, str | None] | None:
    """Wait for an ``auth`` frame (its token and request id); anything else
    before it gets ``unauthorized``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gw.settings.auth_timeout
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None
        text = message.get("text")
        if message["type"] == "websocket.disconnect":
            return None
        if text is not None:
            try:
                frame = frames.decode_frame(text)
            except ChatError:
                frame = None
            if isinstance(frame, frames.Auth):
                return frame.token, frame.id
        rid = frames.request_id_of(text) if text is not None else None
        await ws.send_text(encode(Error(
            code="unauthorized", message="authenticate first", id=rid)).decode())


async def _authenticate(gw: Gateway, ws: WebSocket) -> tuple[AccessClaims, str | None] | None:
    """The caller's claims and, for a first-frame ``auth``, its request id to ack."""
    request_id: str | None = None
    token = _token_from_upgrade(ws)
    if not token:
        first = await _first_frame_token(gw, ws)
        if first is not None:
            token, request_id = first
    if not token:
        await ws.close(CloseCode.UNAUTHORIZED, "missing token")
        return None
    try:
        return await gw.verifier.verify_async(token), request_id
    except ChatError as exc:
        audit(log, "token rejected", reason=exc.message,
              remote=ws.client.host if ws.client else None)
        await ws.close(CloseCode.UNAUTHORIZED, exc.message[:100])
        return None


async def ws_endpoint(gw: Gateway, ws: WebSocket) -> None:
    await ws.accept()
    if gw.draining:
        await ws.close(CloseCode.SERVICE_RESTART, "draining")
        return
    authenticated = await _authenticate(gw, ws)
    if authenticated is None:
        return
    if gw.is_draining():  # the drain may have begun while this socket authenticated
        await ws.close(CloseCode.SERVICE_RESTART, "draining")
        return
    claims, auth_id = authenticated
    s = gw.settings
    conn = Connection(ws, "s_" + secrets.token_urlsafe(9), User(id=claims.sub, name=claims.name),
                      claims.exp, TokenBucket(s.send_rate, s.send_burst), s.outbound_buffer_bytes)
    gw.add_connection(conn)
    metrics.WS_CONNECTIONS.inc()
    expiry = asyncio.create_task(_expire(conn))
    try:
        conn.send(encode(Welcome(session=conn.session, user=conn.user, node=s.node_id,
                                 heartbeat=s.heartbeat)))
        if auth_id is not None:  # a first-frame auth is a request like any other
            conn.send(encode_ack(auth_id, {}))
        gw.sessions.opened_conn(conn)
        await _read_loop(gw, conn)
    finally:
        expiry.cancel()
        gw.sessions.closed_conn(conn)
        gw.remove_connection(conn)
        metrics.WS_CONNECTIONS.dec()
        conn.stop_writer()
        for room in list(conn.rooms):
            await gw.hub.detach(conn, room)
            await gw.presence.leave(conn, room)
        conn.rooms.clear()


async def _expire(conn: Connection) -> None:
    """Close with 4401 once the token lapses unrefreshed (``auth`` moves exp)."""
    while True:
        left = handlers.token_seconds_left(conn)
        if left <= 0:
            await conn.close(CloseCode.UNAUTHORIZED, "token expired")
            return
        await asyncio.sleep(min(left, 60.0))


async def _read_loop(gw: Gateway, conn: Connection) -> None:
    ws = conn.ws
    strikes = StrikeCounter(gw.settings.abuse_strikes, gw.settings.abuse_window)
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        metrics.WS_MESSAGES_IN.inc()
        data = message.get("text")
        if data is None:
            conn.send(encode(Error(code="bad_request", message="binary frames are not accepted")))
            if await _struck(gw, conn, strikes, "binary frame"):
                return
            continue
        request_id: str | None = None
        try:
            frame = frames.decode_frame(data)
            request_id = frame.id
            result = await handlers.handle(gw, conn, frame)
        except ChatError as exc:
            if request_id is None and exc.code == ErrorCode.BAD_REQUEST:
                request_id = frames.request_id_of(data)
            if exc.code == ErrorCode.FORBIDDEN:
                audit(log, "forbidden", user=conn.user.id, reason=exc.message)
            conn.send(encode(Error(code=exc.code.value, message=exc.message, id=request_id)))
            if exc.code in _STRIKES:
                if exc.code == ErrorCode.RATE_LIMITED:
                    metrics.WS_DROPPED.labels("rate_limited").inc()
                if await _struck(gw, conn, strikes, exc.code.value):
                    return
            continue
        except Exception:
            log.exception("frame handler failed", extra={"fields": {"session": conn.session}})
            conn.send(encode(Error(code="internal", message="internal error", id=request_id)))
            continue
        if result is not None and request_id is not None:
            conn.send(encode_ack(request_id, result))
        if conn.closed:
            return


_STRIKES = frozenset({ErrorCode.BAD_REQUEST, ErrorCode.RATE_LIMITED, ErrorCode.TOO_LARGE})


async def _struck(gw: Gateway, conn: Connection, strikes: StrikeCounter, why: str) -> bool:
    """Count a refused frame; past the abuse limit close with 1008 (README "Limits")."""
    if not strikes.strike():
        return False
    metrics.WS_DROPPED.labels("abuse").inc()
    audit(log, "abusive connection closed", user=conn.user.id, session=conn.session,
          remote=conn.remote, last=why, strikes=strikes.limit, window=strikes.window)
    await conn.close(CloseCode.POLICY, "too many bad or rate-limited frames")
    return True


async def close_all(gw: Gateway, code: int, reason: str) -> None:
    conns = list(gw.connections)
    for conn in conns:
        with contextlib.suppress(Exception):
            await conn.close(code, reason)
    event(log, "sockets closed", count=len(conns), code=code)
