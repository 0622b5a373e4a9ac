"""The REST API as data (docs/protocol.md §5): every route of a gateway, its
parameters, request body, responses and errors, with the bodies as msgspec
structs. :mod:`chat_contract.specs` renders it as OpenAPI 3.1; a unit test
(tests/unit/test_contract_specs.py) keeps this table and the gateway's
routes equal both ways, and the request structs equal to the ones the
gateway decodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from . import limits
from .bus import RoomView, SearchHit
from .errors import ErrorCode
from .events import Attachment, RoomEvent, User
from .rooms import ROOM_ID_PATTERN, RoomId

# The bounds auth-service and history-service enforce, as JavaScript patterns
# (these structs only describe bodies; the gateway decodes its own, of the
# same fields: tests/unit/test_contract_specs.py).
Username = Annotated[str, msgspec.Meta(pattern=f"^{limits.USERNAME_PATTERN}$")]
Password = Annotated[str, msgspec.Meta(min_length=limits.PASSWORD_MIN,
                                       max_length=limits.PASSWORD_MAX)]
UserId = Annotated[str, msgspec.Meta(pattern=f"^{limits.USER_ID_PATTERN}$")]
UserRef = Annotated[str, msgspec.Meta(pattern=f"^{limits.USER_REF_PATTERN}$")]

# --- request bodies -----------------------------------------------------------------


class Register(msgspec.Struct):
    """``POST /v1/auth/register``."""

    username: Username
    password: Password


class Login(msgspec.Struct):
    """``POST /v1/auth/login`` (a wrong name or password: 401)."""

    username: str
    password: str


class Refresh(msgspec.Struct):
    refresh_token: str


class PasswordBody(msgspec.Struct):
    new_password: Password
    password: str | None = None
    current_password: str | None = None  # another name for ``password``


class NewRoom(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=limits.ROOM_NAME_MAX)]
    visibility: Literal["public", "private"] = "public"
    id: RoomId | None = None
    password: Annotated[str, msgspec.Meta(min_length=1,
                                          max_length=limits.ROOM_PASSWORD_MAX)] | None = None
    members: Annotated[list[UserId],
                       msgspec.Meta(max_length=limits.ROOM_INITIAL_MEMBERS_MAX)] = []


class UserBody(msgspec.Struct):
    user: UserRef  # invite: a user id; a DM: an id, or else a username


class ReadBody(msgspec.Struct):
    seq: Annotated[int, msgspec.Meta(ge=0, le=limits.SEQ_MAX)]


class LevelBody(msgspec.Struct):
    level: Literal["all", "mentions", "none"]


# --- response bodies ----------------------------------------------------------------


class UserReply(msgspec.Struct):
    user: User


class Tokens(msgspec.Struct):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class Jwks(msgspec.Struct):
    keys: list[dict[str, Any]]


class Rooms(msgspec.Struct, omit_defaults=True):
    rooms: list[RoomView]
    # ``?public=1`` only: the next page's cursor, null on the last page.
    next_cursor: str | None = None


class Page(msgspec.Struct):
    messages: list[RoomEvent]
    has_more: bool


class ReadPointer(msgspec.Struct):
    seq: int


class NotifyLevel(msgspec.Struct):
    room: str
    level: Literal["all", "mentions", "none"]
    default: bool


class Blocked(msgspec.Struct):
    blocked: list[str]


class SearchResults(msgspec.Struct):
    results: list[SearchHit]
    has_more: bool


class Users(msgspec.Struct):
    users: list[User]


class ErrorDetail(msgspec.Struct):
    code: ErrorCode
    message: str


class ErrorBody(msgspec.Struct):
    """Every refusal: the HTTP status of docs/protocol.md §8 and this body."""

    error: ErrorDetail


# --- operations ---------------------------------------------------------------------

Where = Literal["path", "query", "header"]
# A response: a struct, "binary" (a file), "text" (plain text), "json" (any
# JSON document), "html" or None (no body).
Body = type[msgspec.Struct] | Literal["binary", "text", "json", "html"] | None


@dataclass(frozen=True)
class Param:
    name: str
    where: Where
    schema: dict[str, Any]
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    id: str
    summary: str
    tag: str
    auth: bool = True
    params: tuple[Param, ...] = ()
    body: type[msgspec.Struct] | Literal["upload"] | None = None
    ok: dict[int, Body] = field(default_factory=dict)
    # Error statuses besides 400/401 (auth routes)/429/500/503, all with ErrorBody.
    errors: tuple[int, ...] = ()


ROOM_ID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": ROOM_ID_PATTERN}
_SEQ_Q: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": limits.SEQ_MAX}
ROOM = Param("room", "path", ROOM_ID_SCHEMA, True, "a room id")
USER = Param("user", "path", {"type": "string", "pattern": f"^{limits.USER_REF_PATTERN}$"},
             True, "a user id")
USER_ID = Param("user", "path", {"type": "string", "pattern": f"^{limits.USER_ID_PATTERN}$"},
                True, "a user id")
PAGE = (Param("before", "query", _SEQ_Q, description="exclusive upper seq"),
        Param("after", "query", _SEQ_Q, description="exclusive lower seq"),
        Param("limit", "query", {"type": "integer", "minimum": limits.PAGE_MIN,
                                 "maximum": limits.PAGE_MAX, "default": 50}))
ATTACHMENT_ID = Param("id", "path", {"type": "string", "minLength": 1,
                                     "maxLength": limits.ATTACHMENT_ID_MAX}, True)
_RANGE = Param("Range", "header", {"type": "string"}, description="one range: bytes=a-b")

OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/v1/auth/register", "register", "Create an account", "auth",
              auth=False, body=Register, ok={201: UserReply}, errors=(409,)),
    Operation("POST", "/v1/auth/login", "login", "Log in: an access and a refresh token",
              "auth", auth=False, body=Login, ok={200: Tokens}, errors=(401, 403)),
    Operation("POST", "/v1/auth/refresh", "refresh", "A new token pair for a refresh token",
              "auth", auth=False, body=Refresh, ok={200: Tokens}, errors=(401,)),
    Operation("POST", "/v1/auth/logout", "logout", "End the refresh token's session", "auth",
              auth=False, body=Refresh, ok={204: None}),
    Operation("POST", "/v1/auth/password", "changePassword",
              "Change the password; every session of the user ends", "auth",
              body=PasswordBody, ok={204: None}),
    Operation("GET", "/.well-known/jwks.json", "jwks", "The token signing keys", "auth",
              auth=False, ok={200: Jwks}),
    Operation("GET", "/v1/me", "me", "The caller", "auth", ok={200: UserReply}),
    Operation("GET", "/v1/rooms", "listRooms",
              "The caller's rooms, or the public directory (public=1)", "rooms",
              params=(Param("public", "query", {"type": "string",
                                                "enum": ["0", "1", "true", "false"]}),
                      Param("limit", "query", {"type": "integer", "minimum": 1,
                                               "maximum": limits.ROOM_LIST_MAX}),
                      Param("cursor", "query", {"type": "string", "maxLength": 256})),
              ok={200: Rooms}),
    Operation("POST", "/v1/rooms", "createRoom", "Create a room", "rooms", body=NewRoom,
              ok={201: RoomView}, errors=(403, 404, 409)),
    Operation("GET", "/v1/rooms/{room}", "getRoom", "A room with its members", "rooms",
              params=(ROOM,), ok={200: RoomView}, errors=(403, 404)),
    Operation("POST", "/v1/rooms/{room}/members", "invite", "Add a member", "rooms",
              params=(ROOM,), body=UserBody, ok={200: RoomView}, errors=(403, 404)),
    Operation("DELETE", "/v1/rooms/{room}/members/{user}", "removeMember",
              "Leave, or (the owner) remove a member", "rooms", params=(ROOM, USER),
              ok={204: None}, errors=(403, 404)),
    Operation("POST", "/v1/rooms/{room}/archive", "archiveRoom", "Make the room read-only",
              "rooms", params=(ROOM,), ok={200: RoomView}, errors=(403, 404)),
    Operation("POST", "/v1/rooms/{room}/read", "markRead", "Move the read pointer", "rooms",
              params=(ROOM,), body=ReadBody, ok={200: ReadPointer}, errors=(403, 404)),
    Operation("GET", "/v1/rooms/{room}/messages", "roomMessages", "A page of history",
              "history", params=(ROOM, *PAGE), ok={200: Page}, errors=(403, 404)),
    Operation("PUT", "/v1/rooms/{room}/notify", "setNotifyLevel",
              "Set the caller's offline notification level", "rooms", params=(ROOM,),
              body=LevelBody, ok={200: NotifyLevel}, errors=(404,)),
    Operation("GET", "/v1/rooms/{room}/notify", "getNotifyLevel",
              "The caller's offline notification level", "rooms", params=(ROOM,),
              ok={200: NotifyLevel}, errors=(404,)),
    Operation("GET", "/v1/rooms/{room}/threads/{msg_id}", "threadMessages",
              "A page of a thread's replies", "history",
              params=(ROOM, Param("msg_id", "path", {"type": "string", "minLength": 1,
                                                     "maxLength": limits.MSG_ID_MAX}, True),
                      *PAGE),
              ok={200: Page}, errors=(403, 404)),
    Operation("POST", "/v1/dm", "openDm", "Open (or find) the DM with a user", "rooms",
              body=UserBody, ok={200: RoomView, 201: RoomView}, errors=(403, 404)),
    Operation("GET", "/v1/search", "search", "Search the caller's rooms", "history",
              params=(Param("q", "query", {"type": "string", "minLength": 1,
                                           "maxLength": limits.SEARCH_QUERY_MAX}, True),
                      Param("room", "query", ROOM_ID_SCHEMA),
                      Param("limit", "query", {"type": "integer", "minimum": 1,
                                               "maximum": limits.SEARCH_LIMIT_MAX}),
                      Param("offset", "query", {"type": "integer", "minimum": 0,
                                                "maximum": limits.SEARCH_OFFSET_MAX})),
              ok={200: SearchResults}, errors=(403, 404)),
    Operation("GET", "/v1/users", "findUsers",
              "Who these usernames are (exact, any letter case; unknown ones are left out),"
              " or whose name starts with q", "users",
              params=(Param("name", "query", {"type": "array", "minItems": 1,
                                              "maxItems": limits.USERS_LOOKUP_MAX,
                                              "items": {"type": "string"}},
                            description="a username; repeat for more"),
                      Param("q", "query", {"type": "string", "minLength": 1, "maxLength": 32},
                            description="a name prefix (instead of name)"),
                      Param("limit", "query", {"type": "integer", "minimum": 1,
                                               "maximum": limits.USERS_PREFIX_MAX},
                            description="with q: at most this many users")),
              ok={200: Users}),
    Operation("PUT", "/v1/blocks/{user}", "block", "Block a user", "users", params=(USER_ID,),
              ok={200: Blocked}, errors=(404,)),
    Operation("DELETE", "/v1/blocks/{user}", "unblock", "Unblock a user", "users",
              params=(USER_ID,), ok={200: Blocked}, errors=(404,)),
    Operation("POST", "/v1/rooms/{room}/attachments", "upload", "Upload a file to the room",
              "attachments",
              params=(ROOM, Param("name", "query", {"type": "string"},
                                  description="the file name of a raw body")),
              body="upload", ok={201: Attachment}, errors=(403, 404, 413, 415)),
    Operation("GET", "/v1/attachments/{id}", "download", "An attachment's bytes",
              "attachments", params=(ATTACHMENT_ID, _RANGE),
              ok={200: "binary", 206: "binary", 304: None}, errors=(404, 416)),
    Operation("GET", "/v1/attachments/{id}/thumb", "thumbnail", "An image's thumbnail",
              "attachments", params=(ATTACHMENT_ID, _RANGE),
              ok={200: "binary", 206: "binary", 304: None}, errors=(404, 416)),
    Operation("GET", "/healthz", "healthz", "Liveness", "operations", auth=False,
              ok={200: "text"}),
    Operation("GET", "/readyz", "readyz", "Readiness (503 while not ready or draining)",
              "operations", auth=False, ok={200: "text", 503: "text"}),
    Operation("GET", "/metrics", "metrics", "Prometheus metrics", "operations", auth=False,
              ok={200: "text"}),
    Operation("GET", "/openapi.json", "openapi", "This document (OpenAPI 3.1)", "operations",
              auth=False, ok={200: "json"}),
    Operation("GET", "/asyncapi.json", "asyncapi",
              "The WebSocket protocol (AsyncAPI 3.0)", "operations", auth=False,
              ok={200: "json"}),
    Operation("GET", "/docs", "docs", "A page listing the REST and WebSocket operations",
              "operations", auth=False, ok={200: "html"}),
)
