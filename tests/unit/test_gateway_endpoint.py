"""chat_gateway.endpoint.Endpoint on a stand-in socket: real frames in, what
the endpoint writes out, and the request metrics it moves
(chat_ws_requests_total, chat_send_ack_seconds: docs/protocol.md §7)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import REGISTRY

from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, ErrorCode
from chat_gateway.connection import Connection
from chat_gateway.endpoint import Endpoint
from chat_gateway.handlers import Answer
from chat_gateway.session import Call, JoinRoom, Rules, SendMessage
from chat_gateway.sockets import Sockets

WALL = time.time()


class FakeWs:
    """The part of starlette's WebSocket the endpoint and Connection use."""

    def __init__(self, frames: list[dict[str, Any]]) -> None:
        self.scope: dict[str, Any] = {}
        self.client = None
        self.query_params = {"token": "tok"}
        self.headers: dict[str, str] = {}
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for frame in frames:
            self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def disconnect(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect"})


class Verifier:
    async def verify_async(self, token: str) -> AccessClaims:
        return AccessClaims(sub="u_ann", name="ann", iss="chat", aud="chat", iat=int(WALL),
                            exp=int(WALL) + 600, jti="j")


class Handlers:
    """Joins everything; a send to room ``down`` fails as a publish would."""

    async def perform(self, conn: Connection, call: Call, answer: Answer) -> None:
        if isinstance(call, JoinRoom):
            conn.rooms.add(call.room)  # the room hub's part
            answer({"room": call.room})
        elif isinstance(call, SendMessage):
            await asyncio.sleep(0.01)
            if call.room == "down":
                raise ChatError(ErrorCode.UNAVAILABLE, "message store timed out")
            answer({"msg_id": "m_1", "seq": 1, "ts": "t"})
        else:
            answer({})


class Rooms:
    def archived(self, name: str) -> bool:
        return False

    async def leave_all(self, conn: Connection) -> None:
        pass


class Cap:
    def opened_conn(self, conn: Connection) -> None:
        pass

    def closed_conn(self, conn: Connection) -> None:
        pass


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def serve(frames: list[dict[str, Any]]) -> FakeWs:
    ws = FakeWs(frames)
    handlers = Handlers()
    endpoint = Endpoint(Rules(node="gw-t", heartbeat=25), 1 << 20, Verifier(), handlers,
                        Rooms(), Sockets(), Cap(), lambda: False)
    task = asyncio.create_task(endpoint.serve(ws))  # type: ignore[arg-type]
    # Answers come in order; the last frame's id says all were answered.
    last = frames[-1]["id"]
    for _ in range(200):
        await asyncio.sleep(0.01)
        if any(f.get("id") == last for f in ws.sent):
            break
    ws.disconnect()
    await asyncio.wait_for(task, 2)
    return ws


async def test_frames_through_the_endpoint_move_the_counters_and_the_ack_histogram() -> None:
    keys = [("join", "ok"), ("send", "ok"), ("send", "unavailable"), ("send", "forbidden"),
            ("ping", "ok"), ("unknown", "bad_request")]
    before = {k: value("chat_ws_requests_total", type=k[0], outcome=k[1]) for k in keys}
    acks = value("chat_send_ack_seconds_count")
    acked_time = value("chat_send_ack_seconds_sum")
    ws = await serve([
        {"type": "join", "id": "1", "room": "r"},
        {"type": "join", "id": "2", "room": "down"},
        {"type": "send", "id": "3", "room": "r", "text": "hi"},
        {"type": "send", "id": "4", "room": "down", "text": "lost"},
        {"type": "send", "id": "5", "room": "never-joined", "text": "no"},
        {"type": "ping"},
        {"type": "gibberish", "id": "6"},
    ])
    answers = {f.get("id"): f for f in ws.sent if f.get("id")}
    assert answers["3"]["type"] == "ack" and answers["4"]["code"] == "unavailable"
    assert answers["5"]["code"] == "forbidden" and answers["6"]["code"] == "bad_request"
    after = {k: value("chat_ws_requests_total", type=k[0], outcome=k[1]) - before[k]
             for k in keys}
    assert after == {("join", "ok"): 2, ("send", "ok"): 1, ("send", "unavailable"): 1,
                     ("send", "forbidden"): 1, ("ping", "ok"): 1, ("unknown", "bad_request"): 1}
    # One observation, for the acked send only: at least the handler's 10 ms.
    assert value("chat_send_ack_seconds_count") - acks == 1
    assert 0.01 <= value("chat_send_ack_seconds_sum") - acked_time < 1.0
