"""Every service request–reply, declared once: subject, request type, reply type.

The caller (``chat_kit.bus.request(nc, rpc, payload, timeout)``) and the
service (``chat_kit.bus.serves(service, rpc, handler)``) both take the same
:class:`Rpc`, so a subject and its payload types cannot drift apart between
the two sides. Payloads are in :mod:`.bus`, subjects in :mod:`.subjects`;
docs/protocol.md §9 lists them all (a unit test keeps that table equal to
:data:`ALL`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from . import subjects
from .bus import (
    AccessReply,
    AccessRequest,
    AttachmentRef,
    AttachmentView,
    BlockRequest,
    BlocksReply,
    BlocksRequest,
    ChangeGrant,
    ChangeRequest,
    ClaimReply,
    ClaimRequest,
    Credentials,
    DirectoryRequest,
    DisableReply,
    DisableRequest,
    DmRequest,
    Empty,
    HistoryReply,
    HistoryRequest,
    JwksReply,
    MemberChange,
    MembersReply,
    MembersRequest,
    NotifyLevelReply,
    NotifyLevelRequest,
    OnlineReply,
    OnlineRequest,
    PasswordChange,
    ReactGrant,
    ReactRequest,
    ReadReply,
    ReadRequest,
    RefreshRequest,
    RegisterReply,
    ResolveReply,
    ResolveRequest,
    RoomCreate,
    RoomListRequest,
    RoomRef,
    RoomReply,
    RoomsReply,
    RosterRequest,
    SearchReply,
    SearchRequest,
    ServerDisabled,
    ServerDisconnected,
    ServerMembers,
    ServerPresence,
    ServerPublish,
    ServerPublished,
    ServerRoomRef,
    ServerUserRef,
    TokenPair,
    UploadAllowance,
    UploadCheck,
    UploadRecord,
    UsersReply,
    UsersRequest,
)

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)


@dataclass(frozen=True)
class Rpc(Generic[Req, Rep]):
    """One endpoint: ``name`` within its service (micro endpoint name, metric label)."""

    name: str
    subject: str
    request: type[Req]
    reply: type[Rep]


# auth-service
AUTH_REGISTER = Rpc("register", subjects.AUTH_REGISTER, Credentials, RegisterReply)
AUTH_LOGIN = Rpc("login", subjects.AUTH_LOGIN, Credentials, TokenPair)
AUTH_REFRESH = Rpc("refresh", subjects.AUTH_REFRESH, RefreshRequest, TokenPair)
AUTH_LOGOUT = Rpc("logout", subjects.AUTH_LOGOUT, RefreshRequest, Empty)
AUTH_JWKS = Rpc("jwks", subjects.AUTH_JWKS, Empty, JwksReply)
AUTH_USERS = Rpc("users", subjects.AUTH_USERS, UsersRequest, UsersReply)
AUTH_PASSWORD = Rpc("password", subjects.AUTH_PASSWORD, PasswordChange, Empty)
# Operators (the admin NATS role) and the server API (the gateway asks it for a key
# with the users scope); never a client (chat_devstack.nats_auth).
AUTH_DISABLE = Rpc("disable", subjects.AUTH_DISABLE, DisableRequest, DisableReply)

# history-service: messages, and the room model
HISTORY_MESSAGES = Rpc("messages", subjects.HISTORY_MESSAGES, HistoryRequest, HistoryReply)
ROOMS_CREATE = Rpc("rooms_create", subjects.ROOMS_CREATE, RoomCreate, RoomReply)
ROOMS_GET = Rpc("rooms_get", subjects.ROOMS_GET, RoomRef, RoomReply)
ROOMS_LIST = Rpc("rooms_list", subjects.ROOMS_LIST, RoomListRequest, RoomsReply)
ROOMS_ACCESS = Rpc("rooms_access", subjects.ROOMS_ACCESS, AccessRequest, AccessReply)
ROOMS_MEMBER = Rpc("rooms_member", subjects.ROOMS_MEMBER, MemberChange, RoomReply)
ROOMS_ARCHIVE = Rpc("rooms_archive", subjects.ROOMS_ARCHIVE, RoomRef, RoomReply)
ROOMS_DM = Rpc("rooms_dm", subjects.ROOMS_DM, DmRequest, RoomReply)
ROOMS_BLOCK = Rpc("rooms_block", subjects.ROOMS_BLOCK, BlockRequest, BlocksReply)
ROOMS_BLOCKS = Rpc("rooms_blocks", subjects.ROOMS_BLOCKS, BlocksRequest, BlocksReply)
ROOMS_CHANGE = Rpc("rooms_change", subjects.ROOMS_CHANGE, ChangeRequest, ChangeGrant)
ROOMS_READ = Rpc("rooms_read", subjects.ROOMS_READ, ReadRequest, ReadReply)
ROOMS_SEARCH = Rpc("rooms_search", subjects.ROOMS_SEARCH, SearchRequest, SearchReply)
ROOMS_REACT = Rpc("rooms_react", subjects.ROOMS_REACT, ReactRequest, ReactGrant)
ROOMS_RESOLVE = Rpc("rooms_resolve", subjects.ROOMS_RESOLVE, ResolveRequest, ResolveReply)
# The server API's trusted reads (the gateway's role only; no caller).
ROOMS_DIRECTORY = Rpc("rooms_directory", subjects.ROOMS_DIRECTORY, DirectoryRequest, RoomsReply)
ROOMS_ROSTER = Rpc("rooms_roster", subjects.ROOMS_ROSTER, RosterRequest, RoomReply)
ATTACHMENTS_CHECK = Rpc("attachments_check", subjects.ATTACHMENTS_CHECK, UploadCheck,
                        UploadAllowance)
ATTACHMENTS_REGISTER = Rpc("attachments_register", subjects.ATTACHMENTS_REGISTER, UploadRecord,
                           AttachmentView)
ATTACHMENTS_CLAIM = Rpc("attachments_claim", subjects.ATTACHMENTS_CLAIM, ClaimRequest,
                        ClaimReply)
ATTACHMENTS_GET = Rpc("attachments_get", subjects.ATTACHMENTS_GET, AttachmentRef,
                      AttachmentView)

# presence-service
PRESENCE_MEMBERS = Rpc("members", subjects.PRESENCE_MEMBERS, MembersRequest, MembersReply)
PRESENCE_ONLINE = Rpc("online", subjects.PRESENCE_ONLINE, OnlineRequest, OnlineReply)

# notification-service
NOTIFY_LEVEL = Rpc("level", subjects.NOTIFY_LEVEL, NotifyLevelRequest, NotifyLevelReply)

# the server API (README "Server API"): an integrator's backend asks, the
# gateways answer (queue group ``server``); the API key in the Chat-Api-Key header.
SERVER_PUBLISH = Rpc("publish", subjects.SERVER_PUBLISH, ServerPublish, ServerPublished)
SERVER_DISCONNECT = Rpc("disconnect", subjects.SERVER_DISCONNECT, ServerUserRef,
                        ServerDisconnected)
SERVER_PRESENCE = Rpc("presence", subjects.SERVER_PRESENCE, ServerRoomRef, ServerPresence)
SERVER_ROOMS = Rpc("rooms", subjects.SERVER_ROOMS, DirectoryRequest, RoomsReply)
SERVER_MEMBERS = Rpc("members", subjects.SERVER_MEMBERS, ServerRoomRef, ServerMembers)
SERVER_DISABLE = Rpc("disable", subjects.SERVER_DISABLE, ServerUserRef, ServerDisabled)

ALL: tuple[Rpc[msgspec.Struct, msgspec.Struct], ...] = (
    AUTH_REGISTER, AUTH_LOGIN, AUTH_REFRESH, AUTH_LOGOUT, AUTH_JWKS, AUTH_USERS,
    AUTH_PASSWORD, AUTH_DISABLE,
    HISTORY_MESSAGES, ROOMS_CREATE, ROOMS_GET, ROOMS_LIST, ROOMS_ACCESS, ROOMS_MEMBER,
    ROOMS_ARCHIVE, ROOMS_DM, ROOMS_BLOCK, ROOMS_BLOCKS, ROOMS_CHANGE, ROOMS_READ,
    ROOMS_SEARCH, ROOMS_REACT, ROOMS_RESOLVE, ROOMS_DIRECTORY, ROOMS_ROSTER,
    ATTACHMENTS_CHECK, ATTACHMENTS_REGISTER,
    ATTACHMENTS_CLAIM, ATTACHMENTS_GET, PRESENCE_MEMBERS, PRESENCE_ONLINE, NOTIFY_LEVEL,
    SERVER_PUBLISH, SERVER_DISCONNECT, SERVER_PRESENCE, SERVER_ROOMS, SERVER_MEMBERS,
    SERVER_DISABLE,
)  # type: ignore[assignment]

# Which micro service (also its queue group) answers a subject, by prefix.
_SERVICE_BY_PREFIX = {
    "svc.auth.": "auth",
    "svc.history.": "history",
    "svc.rooms.": "history",  # the room model lives beside the messages
    "svc.attachments.": "history",  # uploads' metadata, beside the rooms
    "svc.presence.": "presence",
    "svc.notify.": "notify",
    "svc.server.": "server",  # the gateways (chat_gateway.server_api)
}


def service_of(rpc: Rpc[Req, Rep]) -> str:
    """Who answers ``rpc``: ``auth``, ``history``, ``presence``, ``notify``, or
    ``server`` (the gateways' server API)."""
    for prefix, service in _SERVICE_BY_PREFIX.items():
        if rpc.subject.startswith(prefix):
            return service
    raise ValueError(f"no service answers {rpc.subject}")
