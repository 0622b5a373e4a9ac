"""uvicorn's websockets-sansio protocol with less memory per idle socket.

Measured with tracemalloc on 1,000 idle authenticated sockets (issue 13),
uvicorn's protocol keeps per socket, beyond what it needs once the socket
is open:

- an :class:`asyncio.Queue` for the ASGI ``receive`` side: three deques and
  an :class:`asyncio.Event` (a fourth deque), ~3.3 KB, for a queue that one
  reader drains and that rarely holds more than a frame;
- an :class:`asyncio.Event` for write back-pressure (its deque, 0.8 KB);
- the handshake's :class:`websockets.http11.Request` and
  :class:`~websockets.http11.Response` (path with the token, headers:
  ~2.5 KB), only read before the handshake completes (the ASGI scope keeps
  what the application reads).

:class:`SlimProtocol` replaces the first two with one-reader equivalents
that allocate nothing until someone waits, and drops the request and response once the
upgrade is answered.

It also calls the application's WebSocket endpoints directly
(:meth:`SlimProtocol.serve_routes`): Starlette's routing and exception
middleware are ~10 coroutine frames and closures (~5 KB) that every idle
socket's ASGI task would otherwise keep suspended for its whole life, and do
nothing for a WebSocket route of exact path (Starlette's error middleware
passes WebSocket scopes through; the endpoints raise no HTTP exceptions).
uvicorn's proxy-headers handling (the client address from a trusted
proxy's X-Forwarded-For) and the raw ``send`` in the scope
(chat_kit.http.expose_raw_send) are kept; any other path goes through the
whole application as before.

Everything else is uvicorn's, unchanged (the frame
parser, keepalive pings, close handshake, back-pressure); the gateway
already relies on this protocol's attributes (``transport``,
``close_sent``, ``read_paused``: :mod:`.connection`). The constraint file
pins uvicorn; a test runs the protocol against a real uvicorn server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from chat_kit.http import RAW_SEND

Endpoint = Callable[[WebSocket], Awaitable[None]]
ASGI = Callable[[Any, Any, Any], Awaitable[None]]


class _Inbox:
    """What the protocol uses of :class:`asyncio.Queue` (``put_nowait``, ``get``,
    ``empty``), for one reader: a list and a future, both made on first use."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        assert self._items is not None
        item = self._items.pop(0)
        if not self._items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0


class _Flag:
    """What the protocol uses of :class:`asyncio.Event` (``set``, ``clear``,
    ``wait``, ``is_set``), its waiters made only when someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


async def _call_endpoint(endpoint: Endpoint, scope: Any, receive: Any, send: Any) -> None:
    scope[RAW_SEND] = send
    await endpoint(WebSocket(scope, receive, send))


class SlimProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, lighter per idle socket (module docstring)."""

    # Where the WebSocket routes come from (the application's, once started),
    # and the direct ASGI callables built from them: by path.
    _routes: ClassVar[Callable[[], list[BaseRoute]] | None] = None
    _direct: ClassVar[dict[str, ASGI] | None] = None

    @classmethod
    def serve_routes(cls, routes: Callable[[], list[BaseRoute]]) -> None:
        """Call the WebSocket endpoints of ``routes()`` (read at the first connection,
        after the application started) without Starlette's routing around them."""
        cls._routes, cls._direct = routes, None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def _direct_app(self) -> ASGI | None:
        cls = type(self)
        if cls._direct is None:
            if cls._routes is None:
                return None
            direct: dict[str, ASGI] = {}
            for route in cls._routes():
                if isinstance(route, WebSocketRoute) and "{" not in route.path:
                    endpoint: Endpoint = route.endpoint

                    async def app(scope: Any, receive: Any, send: Any,
                                  endpoint: Endpoint = endpoint) -> None:
                        await _call_endpoint(endpoint, scope, receive, send)

                    config = self.config
                    direct[route.path] = (ProxyHeadersMiddleware(app, config.forwarded_allow_ips)
                                          if config.proxy_headers else app)
            cls._direct = direct
        return cls._direct.get(self.scope["path"])

    async def run_asgi(self) -> None:
        app = self._direct_app()
        if app is None:
            await super().run_asgi()
            return
        self.app = app  # this connection's only; uvicorn's run_asgi does the rest
        await super().run_asgi()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # Only read until the upgrade is answered (accept or reject). The
            # parser's generator keeps the request as a local for the socket's
            # life: emptied instead (the scope has copies of what is read).
            request = self.request
            if request is not None:
                request.headers.clear()
                request.path = ""
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
