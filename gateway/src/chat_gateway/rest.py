"""The REST API (docs/protocol.md §5): auth and the caller here, the room model
in :mod:`.rest_rooms`, with the shared helpers below.

Every route is a thin translation: HTTP in, one NATS request to a service,
HTTP out. Errors use ``{"error":{"code","message"}}`` and §8's statuses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_contract import frames, subjects
from chat_contract.bus import (
    Credentials,
    Empty,
    JwksReply,
    RefreshRequest,
    RegisterReply,
    TokenPair,
)
from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, ErrorCode
from chat_kit import bus

if TYPE_CHECKING:
    from .component import Gateway

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json")


def error_response(exc: ChatError) -> Response:
    response = json_response({"error": {"code": exc.code.value, "message": exc.message}},
                             exc.http_status)
    if exc.code == ErrorCode.RATE_LIMITED:
        retry = exc.retry_after if exc.retry_after is not None else 1.0
        response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return response


Handler = Callable[["Gateway", Request], Awaitable[Response]]


def route(gw: Gateway, path: str, handler: Handler, method: str) -> Route:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(gw, request)
        except ChatError as exc:
            return error_response(exc)

    return Route(path, endpoint, methods=[method])


MAX_BODY = 64 * 1024


async def read_body(request: Request, type_: type[Any]) -> Any:
    # Refuse by the declared length, and stop reading past the limit: never
    # buffer an unbounded body (these routes need no authentication).
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ChatError(ErrorCode.TOO_LARGE, "request body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ChatError(ErrorCode.TOO_LARGE, "request body too large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return msgspec.json.decode(raw, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChatError(ErrorCode.BAD_REQUEST, f"bad request body: {exc}") from None


class _Login(msgspec.Struct):
    username: str
    password: str


class _Refresh(msgspec.Struct):
    refresh_token: str


def _remote(request: Request) -> str | None:
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.client.host if request.client else None


async def caller_claims(gw: Gateway, request: Request) -> AccessClaims:
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        raise ChatError(ErrorCode.UNAUTHORIZED, "missing bearer token")
    return await gw.verifier.verify_async(header[7:].strip())


def request_timeout(gw: Gateway) -> float:
    return gw.settings.common.request_timeout


async def register(gw: Gateway, request: Request) -> Response:
    body = await read_body(request, _Login)
    reply = await bus.call(gw.nc, subjects.AUTH_REGISTER,
                           Credentials(username=body.username, password=body.password,
                                       remote=_remote(request)),
                           RegisterReply, request_timeout(gw))
    return json_response({"user": reply.user}, 201)


async def login(gw: Gateway, request: Request) -> Response:
    body = await read_body(request, _Login)
    reply = await bus.call(gw.nc, subjects.AUTH_LOGIN,
                           Credentials(username=body.username, password=body.password,
                                       remote=_remote(request)),
                           TokenPair, request_timeout(gw))
    return json_response(_pair(reply))


def _pair(pair: TokenPair) -> dict[str, Any]:
    return {"access_token": pair.access_token, "refresh_token": pair.refresh_token,
            "token_type": pair.token_type, "expires_in": pair.expires_in}


async def refresh(gw: Gateway, request: Request) -> Response:
    body = await read_body(request, _Refresh)
    reply = await bus.call(gw.nc, subjects.AUTH_REFRESH,
                           RefreshRequest(refresh_token=body.refresh_token,
                                          remote=_remote(request)),
                           TokenPair, request_timeout(gw))
    return json_response(_pair(reply))


async def logout(gw: Gateway, request: Request) -> Response:
    body = await read_body(request, _Refresh)
    await bus.call(gw.nc, subjects.AUTH_LOGOUT,
                   RefreshRequest(refresh_token=body.refresh_token, remote=_remote(request)),
                   Empty, request_timeout(gw))
    return Response(status_code=204)


async def jwks(gw: Gateway, request: Request) -> Response:
    reply = await bus.call(gw.nc, subjects.AUTH_JWKS, Empty(), JwksReply, request_timeout(gw))
    return json_response({"keys": reply.keys})


async def me(gw: Gateway, request: Request) -> Response:
    claims = await caller_claims(gw, request)
    return json_response({"user": {"id": claims.sub, "name": claims.name}})


_INTEGER = re.compile(r"-?[0-9]{1,20}")


def int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # Plain decimal digits only: int() would also take " 7", "+7" and "1_0".
    if _INTEGER.fullmatch(raw) is None:
        raise ChatError(ErrorCode.BAD_REQUEST, f"{name} must be an integer")
    value = int(raw)
    if not 0 <= value <= frames.MAX_SEQ:
        raise ChatError(ErrorCode.BAD_REQUEST, f"{name} must be between 0 and {frames.MAX_SEQ}")
    return value


def routes(gw: Gateway) -> list[Route]:
    return [
        route(gw, "/v1/auth/register", register, "POST"),
        route(gw, "/v1/auth/login", login, "POST"),
        route(gw, "/v1/auth/refresh", refresh, "POST"),
        route(gw, "/v1/auth/logout", logout, "POST"),
        route(gw, "/.well-known/jwks.json", jwks, "GET"),
        route(gw, "/v1/me", me, "GET"),
    ]
