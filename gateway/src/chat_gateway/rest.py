"""The REST API's auth routes and ``/v1/me`` (docs/protocol.md §5), and what
every REST route shares: :class:`RestContext`, errors, bodies, query integers.
The room model's routes are in :mod:`.rest_rooms`.

Every route is a thin translation: HTTP in, one NATS request to a service,
HTTP out. Errors use ``{"error":{"code","message"}}`` and §8's statuses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_contract import limits, rpc
from chat_contract.bus import Credentials, Empty, PasswordChange, RefreshRequest, TokenPair
from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User

from .services import Requests


@dataclass(frozen=True)
class RestContext:
    """What REST routes are given: service requests, token checks, presence."""

    services: Requests
    verify: Callable[[str], Awaitable[AccessClaims]]
    # The users present in a room now (presence-service); ChatError if unknown.
    online: Callable[[str], Awaitable[list[User]]]

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json")


def error_response(exc: ChatError) -> Response:
    response = json_response({"error": {"code": exc.code.value, "message": exc.message}},
                             exc.http_status)
    if exc.code == ErrorCode.RATE_LIMITED or exc.retry_after is not None:
        retry = exc.retry_after if exc.retry_after is not None else 1.0
        response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return response


Handler = Callable[[RestContext, Request], Awaitable[Response]]


def route(ctx: RestContext, path: str, handler: Handler, method: str) -> Route:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(ctx, request)
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


class _Password(msgspec.Struct):
    new_password: str
    password: str | None = None
    current_password: str | None = None  # another name for ``password``


def _remote(request: Request) -> str | None:
    # uvicorn has already put X-Forwarded-For's client here when the peer is a
    # trusted proxy (CHAT_GATEWAY_TRUSTED_PROXIES); from anyone else it is ignored.
    return request.client.host if request.client else None


async def caller_claims(ctx: RestContext, request: Request) -> AccessClaims:
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        raise ChatError(ErrorCode.UNAUTHORIZED, "missing bearer token")
    return await ctx.verify(header[7:].strip())


async def register(ctx: RestContext, request: Request) -> Response:
    body = await read_body(request, _Login)
    reply = await ctx.services.request(rpc.AUTH_REGISTER, Credentials(
        username=body.username, password=body.password, remote=_remote(request)))
    return json_response({"user": reply.user}, 201)


async def login(ctx: RestContext, request: Request) -> Response:
    body = await read_body(request, _Login)
    reply = await ctx.services.request(rpc.AUTH_LOGIN, Credentials(
        username=body.username, password=body.password, remote=_remote(request)))
    return json_response(_pair(reply))


def _pair(pair: TokenPair) -> dict[str, Any]:
    return {"access_token": pair.access_token, "refresh_token": pair.refresh_token,
            "token_type": pair.token_type, "expires_in": pair.expires_in}


async def refresh(ctx: RestContext, request: Request) -> Response:
    body = await read_body(request, _Refresh)
    reply = await ctx.services.request(rpc.AUTH_REFRESH, RefreshRequest(
        refresh_token=body.refresh_token, remote=_remote(request)))
    return json_response(_pair(reply))


async def logout(ctx: RestContext, request: Request) -> Response:
    body = await read_body(request, _Refresh)
    await ctx.services.request(rpc.AUTH_LOGOUT, RefreshRequest(
        refresh_token=body.refresh_token, remote=_remote(request)))
    return Response(status_code=204)


async def change_password(ctx: RestContext, request: Request) -> Response:
    """Needs the current password; every session of the user ends (this one too)."""
    claims = await caller_claims(ctx, request)
    body = await read_body(request, _Password)
    current = body.password if body.password is not None else body.current_password
    if current is None:
        raise ChatError(ErrorCode.BAD_REQUEST, "password (the current one) is required")
    await ctx.services.request(rpc.AUTH_PASSWORD, PasswordChange(
        caller=User(id=claims.sub, name=claims.name), password=current,
        new_password=body.new_password, remote=_remote(request)))
    return Response(status_code=204)


async def jwks(ctx: RestContext, request: Request) -> Response:
    reply = await ctx.services.request(rpc.AUTH_JWKS, Empty())
    return json_response({"keys": reply.keys})


async def me(ctx: RestContext, request: Request) -> Response:
    claims = await caller_claims(ctx, request)
    return json_response({"user": {"id": claims.sub, "name": claims.name}})


_INTEGER = re.compile(r"-?[0-9]{1,20}")


def int_param(request: Request, name: str, default: int | None) -> int | None:
    # Once at most: `?before=x&before=` was read as its last value (absent),
    # so an invalid bound passed unnoticed (schemathesis, issue 15).
    if len(request.query_params.getlist(name)) > 1:
        raise ChatError(ErrorCode.BAD_REQUEST, f"{name} given more than once")
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # Plain decimal digits only: int() would also take " 7", "+7" and "1_0".
    if _INTEGER.fullmatch(raw) is None:
        raise ChatError(ErrorCode.BAD_REQUEST, f"{name} must be an integer")
    value = int(raw)
    if not 0 <= value <= limits.SEQ_MAX:
        raise ChatError(ErrorCode.BAD_REQUEST, f"{name} must be between 0 and {limits.SEQ_MAX}")
    return value


def routes(ctx: RestContext) -> list[Route]:
    return [
        route(ctx, "/v1/auth/register", register, "POST"),
        route(ctx, "/v1/auth/login", login, "POST"),
        route(ctx, "/v1/auth/refresh", refresh, "POST"),
        route(ctx, "/v1/auth/logout", logout, "POST"),
        route(ctx, "/v1/auth/password", change_password, "POST"),
        route(ctx, "/.well-known/jwks.json", jwks, "GET"),
        route(ctx, "/v1/me", me, "GET"),
    ]
