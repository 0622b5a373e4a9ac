"""The baseline relay: what a bare uvicorn + starlette + nats-py chat relay costs.

The yardstick of issue 13 — what the stack is compared with by
``tests/load/compare.py``. No authentication, no persistence, no sequence
numbers, no presence: a WebSocket endpoint that relays room messages through
core NATS between relay processes, written as a competent engineer would
write it with these libraries' public APIs:

- uvicorn with uvloop and httptools (and its default WebSocket
  implementation, the one the gateway uses too), a starlette app;
- client frames decoded with msgspec;
- one core-NATS subscription per room per process, made when the room's first
  local member joins and dropped when its last one leaves;
- the sending relay builds the event (``msg_id``, ``user``, ``ts``) and
  encodes it once; every relay holding members of the room gets those bytes
  from NATS and writes them, unchanged, to each local member with
  ``WebSocket.send_text`` (no per-member encoding).

Frames (the subset of docs/protocol.md §3 the fan-out benchmark uses):

- ``{"type":"join","id":…,"room":…}`` → ``{"type":"ack","id":…,"room":…}``;
- ``{"type":"send","room":…,"text":…,"id"?:…}`` → published on
  ``chat.room.<room>``, then ``{"type":"ack","id"?:…,"msg_id":…,"ts":…}``
  (the gateway acks every send too); every member of the room, on any relay,
  the sender included, receives
  ``{"type":"message","room":…,"msg_id":…,"text":…,"user":…,"ts":…}``;
- ``{"type":"leave","id":…,"room":…}`` → ack; anything else → an ``error``.

The user is the ``user`` query parameter, else ``anon-<n>`` (``token`` is
accepted and ignored, so the benchmark's URLs work unchanged).

    .venv/bin/python tests/load/relay_baseline.py --port 9001 --nats nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator

import msgspec
import nats
import uvicorn
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SUBJECT_PREFIX = "chat.room."


class ClientFrame(msgspec.Struct):
    type: str
    room: str = ""
    text: str = ""
    id: str | None = None


class MessageEvent(msgspec.Struct, tag_field="type", tag="message"):
    room: str
    msg_id: str
    text: str
    user: str
    ts: str


class Ack(msgspec.Struct, tag_field="type", tag="ack", omit_defaults=True):
    id: str | None = None
    room: str | None = None
    msg_id: str | None = None
    ts: str | None = None


class ErrorEvent(msgspec.Struct, tag_field="type", tag="error", omit_defaults=True):
    code: str
    message: str
    id: str | None = None


_decode_frame = msgspec.json.Decoder(ClientFrame).decode
_encode = msgspec.json.Encoder().encode

# msg_ids unique across processes and restarts: pid and start time, then a counter.
_id_prefix = f"{os.getpid():x}{int(time.time()):x}-"
_id_counter = itertools.count(1)
_anon = itertools.count(1)


def utc_timestamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Relay:
    """Local room membership and the NATS side: one subscription per local room."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.nc: nats.NATS | None = None
        self.rooms: dict[str, set[WebSocket]] = {}
        self.subs: dict[str, Subscription] = {}

    async def start(self) -> None:
        self.nc = await nats.connect(self.nats_url, name=f"relay-{os.getpid()}",
                                     max_reconnect_attempts=-1)

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.drain()

    async def join(self, ws: WebSocket, room: str) -> None:
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            assert self.nc is not None
            self.subs[room] = await self.nc.subscribe(SUBJECT_PREFIX + room, cb=self.deliver)
        members.add(ws)

    async def leave(self, ws: WebSocket, room: str) -> None:
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(ws)
        if not members:
            del self.rooms[room]
            sub = self.subs.pop(room)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def publish(self, room: str, text: str, user: str) -> tuple[str, str]:
        msg_id = f"{_id_prefix}{next(_id_counter):x}"
        ts = utc_timestamp(time.time())
        assert self.nc is not None
        await self.nc.publish(SUBJECT_PREFIX + room,
                              _encode(MessageEvent(room, msg_id, text, user, ts)))
        return msg_id, ts

    async def deliver(self, msg: Msg) -> None:
        """An event of a room held here: the same text to every local member."""
        members = self.rooms.get(msg.subject[len(SUBJECT_PREFIX):])
        if not members:
            return
        text = msg.data.decode()
        gone: list[WebSocket] = []
        for ws in tuple(members):
            try:
                await ws.send_text(text)
            except Exception:  # closed under us: the receive loop cleans up
                gone.append(ws)
        for ws in gone:
            members.discard(ws)


def create_app(nats_url: str) -> Starlette:
    relay = Relay(nats_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.start()
        yield
        await relay.stop()

    async def readyz(request: Request) -> PlainTextResponse:
        ok = relay.nc is not None and relay.nc.is_connected
        return PlainTextResponse("ok" if ok else "nats down", status_code=200 if ok else 503)

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        user = ws.query_params.get("user") or f"anon-{next(_anon)}"
        joined: set[str] = set()
        try:
            while True:
                raw = await ws.receive_text()
                try:
                    frame = _decode_frame(raw)
                except msgspec.DecodeError as exc:
                    await ws.send_text(_encode(ErrorEvent("bad_request", str(exc))).decode())
                    continue
                if frame.type == "send" and frame.room in joined:
                    msg_id, ts = await relay.publish(frame.room, frame.text, user)
                    await ws.send_text(_encode(Ack(frame.id, msg_id=msg_id, ts=ts)).decode())
                elif frame.type == "join" and frame.room:
                    if frame.room not in joined:
                        joined.add(frame.room)
                        await relay.join(ws, frame.room)
                    await ws.send_text(_encode(Ack(frame.id, room=frame.room)).decode())
                elif frame.type == "leave" and frame.room:
                    joined.discard(frame.room)
                    await relay.leave(ws, frame.room)
                    await ws.send_text(_encode(Ack(frame.id, room=frame.room)).decode())
                else:
                    code = "not_joined" if frame.type == "send" else "bad_request"
                    await ws.send_text(_encode(ErrorEvent(code, frame.type, frame.id)).decode())
        except WebSocketDisconnect:
            pass
        finally:
            for room in joined:
                await relay.leave(ws, room)

    return Starlette(routes=[Route("/readyz", readyz), WebSocketRoute("/ws", endpoint)],
                     lifespan=lifespan)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS URL")
    args = ap.parse_args()
    uvicorn.run(create_app(args.nats), host=args.host, port=args.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
