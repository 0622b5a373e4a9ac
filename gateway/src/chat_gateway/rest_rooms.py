"""REST routes of the room model (docs/protocol.md §5): rooms, members, DMs,
blocks, read pointers, history and search.

Each route checks what it can without a round trip (token, ids, types,
ranges → ``bad_request``), then asks history-service, which decides what the
caller may do. Room objects are returned as the body itself (``→ 201 room``);
lists come in their §8 envelopes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_contract import rooms, subjects
from chat_contract.bus import (
    BlockRequest,
    BlocksReply,
    DmRequest,
    Empty,
    HistoryReply,
    HistoryRequest,
    MemberChange,
    ReadReply,
    ReadRequest,
    RoomCreate,
    RoomListRequest,
    RoomRef,
    RoomReply,
    RoomsReply,
    RoomView,
    SearchReply,
    SearchRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_contract.frames import Seq
from chat_contract.rooms import RoomId
from chat_kit import bus

from .rest import caller_claims, int_param, json_response, read_body, request_timeout, route

if TYPE_CHECKING:
    from .component import Gateway

# User ids are ``u_`` + random; names ``[A-Za-z0-9_.-]{3,32}``. Either fits here.
_USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_QUERY_CHARS = 256
MAX_SEARCH_LIMIT = 50
MAX_SEARCH_OFFSET = 1000
MAX_ROOM_LIST = 100


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


async def _me(gw: Gateway, request: Request) -> User:
    claims = await caller_claims(gw, request)
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


async def _room_reply(gw: Gateway, subject: str, payload: msgspec.Struct) -> RoomReply:
    return await bus.call(gw.nc, subject, payload, RoomReply, request_timeout(gw))


# --- rooms ------------------------------------------------------------------


async def list_rooms(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    public = _flag(request, "public")
    limit = _bounded(request, "limit", MAX_ROOM_LIST, 1, MAX_ROOM_LIST)
    reply = await bus.call(gw.nc, subjects.ROOMS_LIST,
                           RoomListRequest(caller=caller, public=public, limit=limit),
                           RoomsReply, request_timeout(gw))
    return json_response({"rooms": reply.rooms})


async def create_room(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    body: _NewRoom = await read_body(request, _NewRoom)
    reply = await _room_reply(gw, subjects.ROOMS_CREATE, RoomCreate(
        caller=caller, name=body.name, visibility=body.visibility, id=body.id,
        password=body.password, members=body.members))
    return json_response(reply.room, 201)


async def get_room(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    room = _room_param(request)
    reply = await _room_reply(gw, subjects.ROOMS_GET, RoomRef(caller=caller, room=room))
    await _mark_online(gw, reply.room)
    return json_response(reply.room)


async def _mark_online(gw: Gateway, view: RoomView) -> None:
    """Members' ``online`` from presence; presence unavailable → all offline."""
    if not view.members:
        return
    try:
        present = {user.id for user in await gw.presence.members(view.id)}
    except ChatError:
        present = set()
    for member in view.members:
        member.online = member.id in present


async def invite(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    room = _room_param(request)
    body: _UserBody = await read_body(request, _UserBody)
    reply = await _room_reply(gw, subjects.ROOMS_MEMBER, MemberChange(
        caller=caller, room=room, user=_user_ref(body.user), add=True))
    return json_response(reply.room)


async def remove_member(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    room = _room_param(request)
    user = _user_ref(request.path_params["user"])
    await bus.call(gw.nc, subjects.ROOMS_MEMBER,
                   MemberChange(caller=caller, room=room, user=user, add=False),
                   Empty, request_timeout(gw))
    return Response(status_code=204)


async def archive(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    room = _room_param(request)
    reply = await _room_reply(gw, subjects.ROOMS_ARCHIVE, RoomRef(caller=caller, room=room))
    return json_response(reply.room)


async def mark_read(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    room = _room_param(request)
    body: _ReadBody = await read_body(request, _ReadBody)
    reply = await bus.call(gw.nc, subjects.ROOMS_READ,
                           ReadRequest(caller=caller, room=room, seq=body.seq),
                           ReadReply, request_timeout(gw))
    return json_response({"seq": reply.seq})


async def room_messages(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    room = _room_param(request)
    limit = _bounded(request, "limit", 50, 1, 100)
    reply = await bus.call(gw.nc, subjects.HISTORY_MESSAGES,
                           HistoryRequest(room=room, user=caller.id,
                                          before=int_param(request, "before", None),
                                          after=int_param(request, "after", None), limit=limit),
                           HistoryReply, request_timeout(gw))
    return json_response({"messages": reply.messages, "has_more": reply.has_more})


# --- direct messages, blocks, search ----------------------------------------


async def open_dm(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    body: _UserBody = await read_body(request, _UserBody)
    reply = await _room_reply(gw, subjects.ROOMS_DM,
                              DmRequest(caller=caller, user=_user_ref(body.user)))
    return json_response(reply.room, 201 if reply.created else 200)


async def _block(gw: Gateway, request: Request, block: bool) -> Response:
    caller = await _me(gw, request)
    user = _user_ref(request.path_params["user"])
    reply = await bus.call(gw.nc, subjects.ROOMS_BLOCK,
                           BlockRequest(caller=caller, user=user, block=block),
                           BlocksReply, request_timeout(gw))
    return json_response({"blocked": reply.blocked})


async def block(gw: Gateway, request: Request) -> Response:
    return await _block(gw, request, True)


async def unblock(gw: Gateway, request: Request) -> Response:
    return await _block(gw, request, False)


async def search(gw: Gateway, request: Request) -> Response:
    caller = await _me(gw, request)
    q = request.query_params.get("q", "").strip()
    if not q:
        raise ChatError(ErrorCode.BAD_REQUEST, "q is required")
    if len(q) > MAX_QUERY_CHARS:
        raise ChatError(ErrorCode.BAD_REQUEST, f"q exceeds {MAX_QUERY_CHARS} characters")
    room: str | None = request.query_params.get("room") or None
    if room is not None and not rooms.is_valid_room_id(room):
        raise ChatError(ErrorCode.BAD_REQUEST, "invalid room id")
    limit = _bounded(request, "limit", 20, 1, MAX_SEARCH_LIMIT)
    offset = _bounded(request, "offset", 0, 0, MAX_SEARCH_OFFSET)
    reply = await bus.call(gw.nc, subjects.ROOMS_SEARCH,
                           SearchRequest(caller=caller, q=q, room=room, limit=limit,
                                         offset=offset),
                           SearchReply, request_timeout(gw))
    body: dict[str, Any] = {"results": reply.results, "has_more": reply.has_more}
    return json_response(body)


def routes(gw: Gateway) -> list[Route]:
    return [
        route(gw, "/v1/rooms", list_rooms, "GET"),
        route(gw, "/v1/rooms", create_room, "POST"),
        route(gw, "/v1/rooms/{room}", get_room, "GET"),
        route(gw, "/v1/rooms/{room}/members", invite, "POST"),
        route(gw, "/v1/rooms/{room}/members/{user}", remove_member, "DELETE"),
        route(gw, "/v1/rooms/{room}/archive", archive, "POST"),
        route(gw, "/v1/rooms/{room}/read", mark_read, "POST"),
        route(gw, "/v1/rooms/{room}/messages", room_messages, "GET"),
        route(gw, "/v1/dm", open_dm, "POST"),
        route(gw, "/v1/search", search, "GET"),
        route(gw, "/v1/blocks/{user}", block, "PUT"),
        route(gw, "/v1/blocks/{user}", unblock, "DELETE"),
    ]
