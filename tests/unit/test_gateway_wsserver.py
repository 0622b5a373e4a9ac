"""chat_gateway.wsserver: uvicorn's websockets-sansio protocol, lighter per socket."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.http11 import Request

from chat_devstack.ports import free_port
from chat_gateway.wsserver import SlimProtocol, _Flag, _Inbox
from chat_kit.http import RAW_SEND, expose_raw_send


async def test_inbox_hands_items_over_in_order_and_survives_a_cancelled_get() -> None:
    inbox = _Inbox()
    assert inbox.empty() and inbox.qsize() == 0
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await getter == 1 and inbox.qsize() == 1
    assert await inbox.get() == 2 and inbox.empty()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.01)
    inbox.put_nowait(3)  # after a cancelled wait: kept for the next get
    assert await inbox.get() == 3


async def test_flag_blocks_waiters_while_cleared() -> None:
    flag = _Flag()
    assert flag.is_set() and await flag.wait()
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.01)  # a cancelled waiter is forgotten
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True]


seen: list[WebSocket] = []


async def echo(ws: WebSocket) -> None:
    seen.append(ws)
    await ws.accept()
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        await ws.send_text(message["text"].upper())


async def hello(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(f"hello {ws.path_params['name']}")
    await ws.close()


ROUTES = [WebSocketRoute("/ws", echo), WebSocketRoute("/hello/{name}", hello)]


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[int]:
    port = free_port()
    SlimProtocol.serve_routes(lambda: ROUTES)
    config = uvicorn.Config(expose_raw_send(Starlette(routes=ROUTES)), host="127.0.0.1",
                            port=port, ws=SlimProtocol,  # type: ignore[arg-type]
                            log_config=None, lifespan="off", ws_per_message_deflate=False,
                            proxy_headers=True, forwarded_allow_ips="127.0.0.1")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(500):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        srv.should_exit = True
        await task


async def test_a_real_uvicorn_serves_websockets_with_it() -> None:
    seen.clear()
    async with server() as port, connect(f"ws://127.0.0.1:{port}/ws?token=abc",
                                         additional_headers={"X-Forwarded-For": "10.1.2.3"}
                                         ) as ws:
        for text in ("hello", "again"):
            await ws.send(text)
            assert await ws.recv() == text.upper()
        (socket,) = seen
        # Called directly (Starlette's router never saw it), with what the gateway
        # reads: the raw send, the query, the client behind the trusted proxy.
        assert "router" not in socket.scope and RAW_SEND in socket.scope
        assert socket.query_params["token"] == "abc"
        assert socket.client is not None and socket.client.host == "10.1.2.3"
        proto = socket.scope[RAW_SEND].__self__
        # The handshake's request and response are dropped once answered (the
        # request emptied: websockets' parser keeps it).
        assert proto.request is None and proto.response is None
        requests = [o for o in gc.get_objects() if isinstance(o, Request)
                    and o.path.startswith("/ws") and o is not ws.request]
        assert requests == []
        assert isinstance(proto.queue, _Inbox) and isinstance(proto.writable, _Flag)
        # The gateway's settings: no permessage-deflate offered back.
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


async def test_other_routes_go_through_the_application() -> None:
    async with server() as port, connect(f"ws://127.0.0.1:{port}/hello/bob") as ws:
        assert await ws.recv() == "hello bob"


def test_the_gateway_runs_it_without_deflate_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_gateway.app import App
    from chat_gateway.config import GatewaySettings
    from chat_gateway.main import server_options

    settings = GatewaySettings.from_env()
    options = server_options(App(settings), settings)
    assert options["ws"] is SlimProtocol and options["ws_per_message_deflate"] is False
    monkeypatch.setenv("CHAT_GATEWAY_WS_PROTOCOL", "websockets-sansio")
    monkeypatch.setenv("CHAT_GATEWAY_WS_DEFLATE", "true")
    settings = GatewaySettings.from_env()
    options = server_options(App(settings), settings)
    assert options["ws"] == "websockets-sansio" and options["ws_per_message_deflate"] is True
    monkeypatch.setenv("CHAT_GATEWAY_WS_PROTOCOL", "tornado")
    with pytest.raises(ValueError, match="CHAT_GATEWAY_WS_PROTOCOL"):
        GatewaySettings.from_env()
