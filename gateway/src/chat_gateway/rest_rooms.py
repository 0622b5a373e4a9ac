"""REST routes of the room model (docs/protocol.md §5): rooms, members, DMs,
blocks, read pointers, history, search and offline notification levels.

Each route checks what it can without a round trip (token, ids, types,
ranges → ``bad_request``, bounds from :mod:`chat_contract.limits`), then asks
history-service, which decides what the caller may do. Room objects are
returned as the body itself (``→ 201 room``); lists come in their §8 envelopes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_contract import limits, rooms, rpc
from chat_contract.bus import (
    BlockRequest,
    DmRequest,
    HistoryRequest,
    MemberChange,
    NotifyLevelRequest,
    ReadRequest,
    RoomCreate,
    RoomListRequest,
    RoomRef,
    RoomView,
    SearchRequest,
    UsersRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_contract.frames import Seq
from chat_contract.rooms import RoomId

from .limits import KeyedBuckets
from .rest import RestContext, caller_claims, int_param, json_response, read_body, route

_USER = re.compile(limits.USER_REF_PATTERN)
_NAME = re.compile(limits.USERNAME_PATTERN)
_NAME_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
# GET /v1/rooms/{id}/messages: `limit` default (a page is PAGE_MIN..PAGE_MAX).
DEFAULT_PAGE = 50
DEFAULT_SEARCH_LIMIT = 20
# GET /v1/users: per user and gateway, a burst for typing a name, then 2 a second.
USER_LOOKUPS = KeyedBuckets(rate=2.0, burst=10)
# An opaque directory cursor (base64 of a timestamp and a room id) is far shorter.
_CURSOR_MAX = 256


class _NewRoom(msgspec.Struct):
    name: str
    visibility: Literal["public", "private"] = "public"
    id: RoomId | None = None
    password: str | None = None
    members: list[str] = []


class _UserBody(msgspec.Struct):
    user: str


class _ReadBody(msgspec.Struct):
    seq: Seq


class _LevelBody(msgspec.Struct):
    level: Literal["all", "mentions", "none"]


async def _me(ctx: RestContext, request: Request) -> User:
    claims = await caller_claims(ctx, request)
    return User(id=claims.sub, name=claims.name)


def _room_param(request: Request) -> str:
    room: str = request.path_params["room"]
    if not rooms.is_valid_room_id(room):
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid room id")
    return room


def _user_ref(value: str) -> str:
    if _USER.fullmatch(value) is None:
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid user")
    return value


def _bounded(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = int_param(request, name, default)
    assert value is not None
    if not low <= value <= high:
        raise ChatError(ErrorCode.BAD_REQUEST, f"{name} must be between {low} and {high}")
    return value


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ChatError(ErrorCode.BAD_REQUEST, f"{name} must be 1 or 0")


# --- rooms ------------------------------------------------------------------


async def list_rooms(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    public = _flag(request, "public")
    limit = _bounded(request, "limit", limits.ROOM_LIST_MAX, 1, limits.ROOM_LIST_MAX)
    # The public directory is cursor-paged (history-service checks the cursor).
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and (not public or len(cursor) > _CURSOR_MAX):
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid cursor")
    reply = await ctx.services.request(rpc.ROOMS_LIST, RoomListRequest(
        caller=caller, public=public, limit=limit, cursor=cursor))
    if public:
        return json_response({"rooms": reply.rooms, "next_cursor": reply.next_cursor})
    return json_response({"rooms": reply.rooms})


async def create_room(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    body: _NewRoom = await read_body(request, _NewRoom)
    reply = await ctx.services.request(rpc.ROOMS_CREATE, RoomCreate(
        caller=caller, name=body.name, visibility=body.visibility, id=body.id,
        password=body.password, members=body.members))
    return json_response(reply.room, 201)


async def get_room(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    room = _room_param(request)
    reply = await ctx.services.request(rpc.ROOMS_GET, RoomRef(caller=caller, room=room))
    await _mark_online(ctx, reply.room)
    return json_response(reply.room)


async def _mark_online(ctx: RestContext, view: RoomView) -> None:
    """Members' ``online`` from presence; presence unavailable → all offline."""
    if not view.members:
        return
    try:
        present = {user.id for user in await ctx.online(view.id)}
    except ChatError:
        present = set()
    for member in view.members:
        member.online = member.id in present


async def invite(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    room = _room_param(request)
    body: _UserBody = await read_body(request, _UserBody)
    reply = await ctx.services.request(rpc.ROOMS_MEMBER, MemberChange(
        caller=caller, room=room, user=_user_ref(body.user), add=True))
    return json_response(reply.room)


async def remove_member(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    room = _room_param(request)
    user = _user_ref(request.path_params["user"])
    await ctx.services.request(rpc.ROOMS_MEMBER, MemberChange(
        caller=caller, room=room, user=user, add=False))
    return Response(status_code=204)


async def archive(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    room = _room_param(request)
    reply = await ctx.services.request(rpc.ROOMS_ARCHIVE, RoomRef(caller=caller, room=room))
    return json_response(reply.room)


async def mark_read(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    room = _room_param(request)
    body: _ReadBody = await read_body(request, _ReadBody)
    reply = await ctx.services.request(rpc.ROOMS_READ, ReadRequest(
        caller=caller, room=room, seq=body.seq))
    return json_response({"seq": reply.seq})


async def room_messages(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    room = _room_param(request)
    limit = _bounded(request, "limit", DEFAULT_PAGE, limits.PAGE_MIN, limits.PAGE_MAX)
    reply = await ctx.services.request(rpc.HISTORY_MESSAGES, HistoryRequest(
        room=room, user=caller.id, before=int_param(request, "before", None),
        after=int_param(request, "after", None), limit=limit))
    return json_response({"messages": reply.messages, "has_more": reply.has_more})


async def thread_messages(ctx: RestContext, request: Request) -> Response:
    """A thread's replies, paged like the room's messages (history-service
    answers ``not_found`` for a root that is no message of the room)."""
    caller = await _me(ctx, request)
    room = _room_param(request)
    root: str = request.path_params["msg_id"]
    if not root or len(root) > limits.MSG_ID_MAX or "\x00" in root:
        raise ChatError(ErrorCode.NOT_FOUND, "unknown message")
    limit = _bounded(request, "limit", DEFAULT_PAGE, limits.PAGE_MIN, limits.PAGE_MAX)
    reply = await ctx.services.request(rpc.HISTORY_MESSAGES, HistoryRequest(
        room=room, user=caller.id, before=int_param(request, "before", None),
        after=int_param(request, "after", None), limit=limit, thread=root))
    return json_response({"messages": reply.messages, "has_more": reply.has_more})


async def notify_level(ctx: RestContext, request: Request) -> Response:
    """``PUT`` sets, ``GET`` reads the caller's offline notification level in
    the room (notification-service decides; members only, else 404)."""
    caller = await _me(ctx, request)
    room = _room_param(request)
    level = None
    if request.method == "PUT":
        body: _LevelBody = await read_body(request, _LevelBody)
        level = body.level
    reply = await ctx.services.request(rpc.NOTIFY_LEVEL, NotifyLevelRequest(
        caller=caller, room=room, level=level))
    return json_response({"room": reply.room, "level": reply.level, "default": reply.default})


# --- direct messages, blocks, search ----------------------------------------


async def open_dm(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    body: _UserBody = await read_body(request, _UserBody)
    reply = await ctx.services.request(rpc.ROOMS_DM, DmRequest(
        caller=caller, user=_user_ref(body.user)))
    return json_response(reply.room, 201 if reply.created else 200)


async def _block(ctx: RestContext, request: Request, block: bool) -> Response:
    caller = await _me(ctx, request)
    user = _user_ref(request.path_params["user"])
    reply = await ctx.services.request(rpc.ROOMS_BLOCK, BlockRequest(
        caller=caller, user=user, block=block))
    return json_response({"blocked": reply.blocked})


async def block(ctx: RestContext, request: Request) -> Response:
    return await _block(ctx, request, True)


async def unblock(ctx: RestContext, request: Request) -> Response:
    return await _block(ctx, request, False)


async def search(ctx: RestContext, request: Request) -> Response:
    caller = await _me(ctx, request)
    q = request.query_params.get("q", "").strip()
    if not q:
        raise ChatError(ErrorCode.BAD_REQUEST, "q is required")
    if len(q) > limits.SEARCH_QUERY_MAX:
        raise ChatError(ErrorCode.BAD_REQUEST, f"q exceeds {limits.SEARCH_QUERY_MAX} characters")
    room: str | None = request.query_params.get("room") or None
    if room is not None and not rooms.is_valid_room_id(room):
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid room id")
    limit = _bounded(request, "limit", DEFAULT_SEARCH_LIMIT, 1, limits.SEARCH_LIMIT_MAX)
    offset = _bounded(request, "offset", 0, 0, limits.SEARCH_OFFSET_MAX)
    reply = await ctx.services.request(rpc.ROOMS_SEARCH, SearchRequest(
        caller=caller, q=q, room=room, limit=limit, offset=offset))
    body: dict[str, Any] = {"results": reply.results, "has_more": reply.has_more}
    return json_response(body)


async def find_users(ctx: RestContext, request: Request) -> Response:
    """``GET /v1/users?name=<username>``: who a name is (exact, case-insensitive),
    so a client can invite by name; ``{"users": []}`` when nobody has it.
    ``GET /v1/users?q=<prefix>&limit=``: the users whose name starts with it
    (name completion)."""
    caller = await _me(ctx, request)
    wait = USER_LOOKUPS.take(caller.id)
    if wait:
        raise ChatError(ErrorCode.RATE_LIMITED, "too many user lookups", retry_after=wait)
    names = request.query_params.getlist("name")
    prefix = request.query_params.get("q")
    if prefix is not None:
        if names:
            raise ChatError(ErrorCode.BAD_REQUEST, "name or q, not both")
        limit = _bounded(request, "limit", 10, 1, limits.USERS_PREFIX_MAX)
        if _NAME_PREFIX.fullmatch(prefix) is None:
            return json_response({"users": []})  # no name starts so
        reply = await ctx.services.request(rpc.AUTH_USERS, UsersRequest(
            prefix=prefix, limit=limit))
        return json_response({"users": reply.users})
    if not names:
        raise ChatError(ErrorCode.BAD_REQUEST, "name or q is required")
    if len(names) > limits.USERS_LOOKUP_MAX:
        raise ChatError(ErrorCode.BAD_REQUEST,
                        f"at most {limits.USERS_LOOKUP_MAX} names")
    if any(_NAME.fullmatch(n) is None for n in names):
        return json_response({"users": []})  # no such user can exist
    reply = await ctx.services.request(rpc.AUTH_USERS, UsersRequest(names=names))
    return json_response({"users": reply.users})


def routes(ctx: RestContext) -> list[Route]:
    return [
        route(ctx, "/v1/rooms", list_rooms, "GET"),
        route(ctx, "/v1/rooms", create_room, "POST"),
        route(ctx, "/v1/rooms/{room}", get_room, "GET"),
        route(ctx, "/v1/rooms/{room}/members", invite, "POST"),
        route(ctx, "/v1/rooms/{room}/members/{user}", remove_member, "DELETE"),
        route(ctx, "/v1/rooms/{room}/archive", archive, "POST"),
        route(ctx, "/v1/rooms/{room}/read", mark_read, "POST"),
        route(ctx, "/v1/rooms/{room}/messages", room_messages, "GET"),
        route(ctx, "/v1/rooms/{room}/notify", notify_level, "PUT"),
        route(ctx, "/v1/rooms/{room}/notify", notify_level, "GET"),
        route(ctx, "/v1/rooms/{room}/threads/{msg_id}", thread_messages, "GET"),
        route(ctx, "/v1/dm", open_dm, "POST"),
        route(ctx, "/v1/search", search, "GET"),
        route(ctx, "/v1/users", find_users, "GET"),
        route(ctx, "/v1/blocks/{user}", block, "PUT"),
        route(ctx, "/v1/blocks/{user}", unblock, "DELETE"),
    ]
