"""The HTTP surface every process has: /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from . import metrics


def health_routes(is_ready: Callable[[], bool]) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        if is_ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
RAW_SEND = "chat.raw_send"


def expose_raw_send(app: ASGIApp) -> ASGIApp:
    """Keep the server's own ``send`` in the scope, before any framework wraps it.

    The gateway writes pre-built frames straight to the socket's transport;
    it reaches the transport through the server protocol that ``send`` is
    bound to (see chat_gateway.connection).
    """

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await app(scope, receive, send)

    return wrapped


# Probes and scrapes are not counted: they would drown the API's figures.
_UNCOUNTED = frozenset({"/healthz", "/readyz", "/metrics"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class CountRequests:
    """ASGI middleware: ``chat_http_requests_total{route,method,status}``.

    ``route`` is the matched route's template (``/v1/rooms/{room}``, never
    the raw path), ``unmatched`` when no route matched (404s of unknown
    paths); ``method`` one of the usual verbs or ``other``: every label is
    bounded whatever clients send. WebSockets pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in _UNCOUNTED:
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before any response: the server answers 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) if route is not None else None
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(path or "unmatched",
                                         method if method in _METHODS else "other",
                                         str(status)).inc()
