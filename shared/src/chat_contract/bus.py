"""Payloads on NATS (docs/protocol.md §6 and §9): versioned msgspec structs as JSON.

``ChatRecord`` is what a gateway publishes to ``chat.room.<room>`` and what the
CHAT stream stores; the stream's sequence becomes the event's ``seq`` and the
previous sequence of the same subject its ``prev_seq``. The request/reply
payloads of the services follow; their subjects are in :mod:`.subjects`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from . import limits
from .events import Attachment, Message, ReactionEvent, RoomEvent, User

VERSION = 1


class _Payload(msgspec.Struct):
    """Base of every bus payload; each subclass ends with ``v`` (the version)."""


RecordKind = Literal["message", "edit", "delete", "react", "unreact"]


class ChatRecord(_Payload):
    """One stored chat event. ``kind``:

    - ``message``: a new message; ``msg_id`` is new, ``sender``/``ts`` its author and time;
    - ``edit``: ``msg_id`` is the edited message's, ``text`` its new text;
    - ``delete``: ``msg_id`` is the deleted message's; no text;
    - ``react``/``unreact``: ``sender`` put/took back the emoji ``text`` on the
      message ``msg_id`` at ``ts`` (a ``reaction`` event, ``on`` true/false).

    Edits and deletes carry the *original* message's ``sender``, ``ts``,
    ``reply_to`` and ``thread`` (an event shows the message in its new
    state), so a block filters them like the message itself; a reaction's
    ``sender`` is the reacting user, so a block filters that user's
    reactions. Each has its own stream sequence. ``thread``: the root's
    ``msg_id`` on a thread's replies.
    """

    room: str
    msg_id: str
    sender: User
    ts: str
    kind: RecordKind = "message"
    text: str | None = None
    reply_to: str | None = None
    # Users mentioned by the message (``@name`` of members, resolved by the
    # gateway at send time): notification-service notifies them while offline.
    mentions: list[str] = []
    thread: str | None = None
    # The uploads a new message carries (checked and claimed by history-service
    # before the gateway publishes: svc.attachments.claim).
    attachments: list[Attachment] = []
    v: int = VERSION


def record_to_event(record: ChatRecord, seq: int, prev_seq: int) -> RoomEvent:
    kind = record.kind
    if kind == "react" or kind == "unreact":
        return ReactionEvent(room=record.room, msg_id=record.msg_id, seq=seq, prev_seq=prev_seq,
                             user=record.sender, emoji=record.text or "", on=kind == "react",
                             ts=record.ts)
    return Message(
        room=record.room,
        msg_id=record.msg_id,
        seq=seq,
        prev_seq=prev_seq,
        sender=record.sender,
        ts=record.ts,
        text=None if kind == "delete" else record.text,
        reply_to=record.reply_to,
        edited=kind == "edit",
        deleted=kind == "delete",
        thread=record.thread,
        mentions=record.mentions or None,
        attachments=(record.attachments or None) if kind == "message" else None,
    )


# --- auth-service -----------------------------------------------------------


class Credentials(_Payload):
    username: str
    password: str
    # Client address as the gateway saw it: for audit logs and throttling.
    remote: str | None = None
    v: int = VERSION


class RegisterReply(_Payload):
    user: User
    v: int = VERSION


class TokenPair(_Payload):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"
    v: int = VERSION


class RefreshRequest(_Payload):
    refresh_token: str
    # Client address as the gateway saw it: for the audit log on token reuse.
    remote: str | None = None
    v: int = VERSION


class PasswordChange(_Payload):
    """Change the caller's password (needs the current one); ends all their sessions."""

    caller: User
    password: str
    new_password: str
    remote: str | None = None
    v: int = VERSION


class DisableRequest(_Payload):
    """Disable (or, with ``disabled`` false, enable) an account by name: an admin action."""

    name: str
    disabled: bool = True
    v: int = VERSION


class DisableReply(_Payload):
    """The account, whether it is disabled now, and how many sessions were ended."""

    user: User
    disabled: bool
    sessions: int = 0
    v: int = VERSION


class JwksReply(_Payload):
    keys: list[dict[str, Any]]
    v: int = VERSION


class Empty(_Payload):
    v: int = VERSION


# --- history-service --------------------------------------------------------


class HistoryRequest(_Payload):
    room: str
    # The caller (user id): private rooms are readable by members only, and the
    # caller's blocked users' events are left out. None = a trusted internal read.
    user: str | None = None
    before: int | None = None
    after: int | None = None
    limit: int = 50
    # Stream sequence the reply must reflect: the service waits until it has
    # stored at least this far, so a read right after a send sees the send.
    min_seq: int = 0
    # A thread's replies only (GET /v1/rooms/{id}/threads/{msg_id}): the root's msg_id.
    thread: str | None = None
    v: int = VERSION


class HistoryReply(_Payload):
    """Events in seq order: messages (with ``reactions``/``thread_info`` as the
    reader sees them) and reactions, so a page's chain is the live one."""

    messages: list[RoomEvent]
    has_more: bool
    v: int = VERSION


# --- auth-service: user lookup (for history-service: invites, DMs, blocks) ---


class UsersRequest(_Payload):
    """Look users up by id and/or by name (names case-insensitively);
    at most ``limits.USERS_LOOKUP_MAX`` each. A ``prefix`` (of a name,
    case-insensitively) adds up to ``limit`` (≤ ``limits.USERS_PREFIX_MAX``)
    users whose name starts with it, in name order: name completion."""

    ids: list[str] = []
    names: list[str] = []
    prefix: str | None = None
    limit: int = 10
    v: int = VERSION


class UsersReply(_Payload):
    """The users found (unknown ones are simply absent): ids first, then
    names, then the prefix's matches (a user may appear more than once)."""

    users: list[User]
    v: int = VERSION


# --- history-service: rooms, membership, read state, search ------------------
# Every request names its ``caller`` (from the verified access token); the
# service decides what that user may do. Refusals travel as ChatError codes.

Visibility = Literal["public", "private"]
Role = Literal["owner", "member"]


class MemberView(msgspec.Struct):
    """A room member (REST ``members`` items; the gateway fills ``online``)."""

    id: str
    name: str
    role: Role = "member"
    online: bool = False


class RoomView(msgspec.Struct, omit_defaults=True):
    """A room as REST shows it (docs/protocol.md §5, §8).

    ``password``: true if joining needs one (the hash never leaves the service).
    ``dm``: a direct-message room (private, exactly two members, no invites).
    ``members``: only in ``GET /v1/rooms/{id}``. ``unread``/``last_seq``/
    ``last_message``: only in the caller's room list (``GET /v1/rooms``);
    ``last_seq`` is the room's latest event sequence (0 for a new room).
    """

    id: str
    name: str
    visibility: Visibility
    owner: str | None
    created_at: str
    # Always present (no defaults, so never omitted).
    password: bool
    archived: bool
    dm: bool
    member_count: int | None = None
    members: list[MemberView] | None = None
    unread: int | None = None
    # The caller's room list only: unread messages that mention the caller.
    mentions: int | None = None
    last_seq: int | None = None
    last_message: Message | None = None


class RoomCreate(_Payload):
    """``POST /v1/rooms``. ``id`` omitted → a random one; ``members``: user ids to add."""

    caller: User
    name: str
    visibility: Visibility = "public"
    id: str | None = None
    password: str | None = None
    members: list[str] = []
    v: int = VERSION


class RoomRef(_Payload):
    """A request about one room by its caller: get, archive."""

    caller: User
    room: str
    v: int = VERSION


class RoomListRequest(_Payload):
    """``GET /v1/rooms``: the caller's rooms, or with ``public`` the public directory."""

    caller: User
    public: bool = False
    limit: int = limits.ROOM_LIST_MAX
    # The public directory: the previous page's ``next_cursor`` (opaque).
    cursor: str | None = None
    v: int = VERSION


class RoomReply(_Payload):
    room: RoomView
    # POST /v1/dm: whether this request created the room (201) or found it (200).
    created: bool = False
    v: int = VERSION


class RoomsReply(_Payload):
    rooms: list[RoomView]
    # The public directory: pass it as ``cursor`` for the next page; None at the end.
    next_cursor: str | None = None
    v: int = VERSION


class AccessRequest(_Payload):
    """A ``join``: may ``caller`` enter ``room`` (with ``password``)?

    Allowed → the caller becomes (or stays) a member. A room that does not
    exist is created as public with the caller as owner when ``create``.
    """

    caller: User
    room: str
    password: str | None = None
    create: bool = True
    v: int = VERSION


class AccessReply(_Payload):
    room: RoomView
    # The caller's blocked user ids: their events are not delivered to the caller.
    blocked: list[str] = []
    v: int = VERSION


class MemberChange(_Payload):
    """Invite (``add``) or leave/remove (not ``add``) ``user`` in ``room``."""

    caller: User
    room: str
    user: str
    add: bool
    v: int = VERSION


class DmRequest(_Payload):
    """``POST /v1/dm``: ``user`` is a user id, or else a username."""

    caller: User
    user: str
    v: int = VERSION


class BlockRequest(_Payload):
    caller: User
    user: str
    block: bool
    v: int = VERSION


class BlocksRequest(_Payload):
    """The caller's blocked set (a gateway catching up after a NATS reconnect)."""

    caller: User
    v: int = VERSION


class BlocksReply(_Payload):
    blocked: list[str]
    v: int = VERSION


class ChangeRequest(_Payload):
    """May ``caller`` edit/delete ``msg_id`` in ``room``? Granted → the original's
    author, ts and reply_to, which the gateway puts in the edit/delete record."""

    caller: User
    room: str
    msg_id: str
    action: Literal["edit", "delete"]
    v: int = VERSION


class ChangeGrant(_Payload):
    sender: User
    ts: str
    reply_to: str | None = None
    thread: str | None = None
    v: int = VERSION


class ReactRequest(_Payload):
    """May ``caller`` put (``on``) or take back ``emoji`` on ``msg_id`` in ``room``?
    Needs a member, a message of the room that is not deleted, and (putting a
    new emoji) fewer distinct emoji on it than the service's cap."""

    caller: User
    room: str
    msg_id: str
    emoji: str
    on: bool
    v: int = VERSION


class ReactGrant(_Payload):
    """``publish``: the change is new, publish a react/unreact record. Not
    ``publish``: the state already is as asked (a repeated ``on``, an ``off``
    of nothing); ``seq`` is then the event that set it (0: none ever)."""

    publish: bool
    seq: int = 0
    v: int = VERSION


class ResolveRequest(_Payload):
    """A ``send`` with a ``thread`` and/or ``@names``: check the thread root (a
    message of ``room``, not deleted) and look the names up among the room's
    members (case-insensitively, at most ``limits.MENTIONS_MAX``)."""

    caller: User
    room: str
    thread: str | None = None
    names: list[str] = []
    v: int = VERSION


class ResolveReply(_Payload):
    """``thread``: the root to store (a reply's own root when ``thread`` named
    a reply); ``mentions``: the ids of the members named."""

    thread: str | None = None
    mentions: list[str] = []
    v: int = VERSION


class ReadRequest(_Payload):
    """Move the caller's read pointer in ``room`` forward to ``seq`` (clamped to
    the room's last sequence); never backward."""

    caller: User
    room: str
    seq: int
    v: int = VERSION


class ReadReply(_Payload):
    seq: int  # the pointer now
    moved: bool
    v: int = VERSION


class SearchRequest(_Payload):
    caller: User
    q: str
    room: str | None = None
    limit: int = 20
    offset: int = 0
    v: int = VERSION


class SearchHit(msgspec.Struct):
    room: str
    msg_id: str
    seq: int
    text: str
    ts: str
    sender: User


class SearchReply(_Payload):
    results: list[SearchHit]
    has_more: bool = False
    v: int = VERSION


# On chat.room.<room>.state (published by history-service after its database
# changed): what gateways with members in the room must apply at once.


class ReadNotice(_Payload, tag_field="op", tag="read"):
    """A member's read pointer moved: relayed as a ``read`` event."""

    room: str
    user: User
    seq: int
    v: int = VERSION


class MemberNotice(_Payload, tag_field="op", tag="member"):
    """``user`` left or was removed: gateways take the user's sockets out of the room."""

    room: str
    user: str
    event: Literal["removed", "left"]
    v: int = VERSION


class ArchiveNotice(_Payload, tag_field="op", tag="archived"):
    """The room is archived: read-only from now on (send/edit → forbidden)."""

    room: str
    v: int = VERSION


RoomState = ReadNotice | MemberNotice | ArchiveNotice


class BlocksNotice(_Payload):
    """On ``users.<user>.blocks``: the user's whole blocked set, after a change."""

    user: str
    blocked: list[str]
    v: int = VERSION


# --- presence-service -------------------------------------------------------


class MembersRequest(_Payload):
    room: str
    # KV revision the answer must reflect (a gateway's own presence put), so a
    # join ack always lists the joiner; 0 = whatever the service knows now.
    min_rev: int = 0
    v: int = VERSION


class MembersReply(_Payload):
    members: list[User]
    v: int = VERSION


class OnlineRequest(_Payload):
    """Which of ``users`` (ids, at most ``limits.USERS_LOOKUP_MAX``) are present
    anywhere: a live presence entry in any room on any gateway."""

    users: list[str]
    v: int = VERSION


class OnlineReply(_Payload):
    """The asked users that are present (the rest count as offline)."""

    online: list[str]
    v: int = VERSION


class PresenceEntry(_Payload):
    """Value of one live key ``<room>.<user>.<session>`` in the PRESENCE bucket.

    A gateway puts it when a connection joins a room and re-puts it on its
    heartbeat; the bucket's TTL removes it when a gateway dies.
    """

    user: User
    node: str
    v: int = VERSION


class PresenceNotice(_Payload, tag_field="op", tag="presence"):
    """On ``presence.<room>``, from presence-service: a user came or went."""

    room: str
    event: Literal["join", "leave"]
    user: User
    ts: str
    v: int = VERSION


class TypingNotice(_Payload, tag_field="op", tag="typing"):
    """On ``presence.<room>``, from the typist's gateway (coalesced).

    ``age_ms``: how long ago the client sent the ``start`` this notice
    carries (a delayed, coalesced refresh), so receivers expire it on time.
    """

    room: str
    user: User
    state: Literal["start", "stop"]
    age_ms: int = 0
    v: int = VERSION


RoomSignal = PresenceNotice | TypingNotice


# --- notification-service -----------------------------------------------------

NotifyLevel = Literal["all", "mentions", "none"]


class NotifyLevelRequest(_Payload):
    """``PUT /v1/rooms/{id}/notify``: set the caller's offline notification
    level in ``room``; ``level`` None reads it. Members only (else ``not_found``)."""

    caller: User
    room: str
    level: NotifyLevel | None = None
    v: int = VERSION


class NotifyLevelReply(_Payload):
    """The caller's level in ``room`` now; ``default``: never set (DMs ``all``,
    other rooms ``mentions``)."""

    room: str
    level: NotifyLevel
    default: bool = False
    v: int = VERSION


# --- history-service: attachments (metadata beside the room model) -----------
# The files themselves are objects of the CHAT_ATTACHMENTS object store
# (docs/protocol.md §10); history-service keeps who uploaded what, where,
# and which message carries it, and answers who may read it.


class UploadCheck(_Payload):
    """Before an upload is read: may ``caller`` upload to ``room`` (a member;
    else ``not_found``), and how many bytes of quota are left?"""

    caller: User
    room: str
    v: int = VERSION


class UploadAllowance(_Payload):
    """``left``: bytes the caller may still store (the per-user quota less
    what its uploads hold now), never below 0."""

    left: int
    v: int = VERSION


class UploadRecord(_Payload):
    """A new upload's metadata, registered before its bytes are stored (the
    quota is checked again here, atomically). ``thumb``: the thumbnail's type
    (images only)."""

    caller: User
    room: str
    attachment: Attachment
    thumb: str | None = None
    v: int = VERSION


class AttachmentRef(_Payload):
    """A download: the upload ``id`` as ``caller`` asks for it."""

    caller: User
    id: str
    v: int = VERSION


class AttachmentView(_Payload):
    """One upload's metadata: the file, its room, owner, thumbnail type and
    the message carrying it (None while unattached)."""

    attachment: Attachment
    room: str
    owner: str
    created_at: str
    thumb: str | None = None
    msg_id: str | None = None
    v: int = VERSION


class ClaimRequest(_Payload):
    """A ``send`` with ``attachments``: attach the caller's uploads ``ids`` of
    ``room`` to the message ``msg_id``. ``key`` names the send (``<user>:
    <client_msg_id>``, else the ``msg_id``): uploads already claimed with the
    same key are granted again, with the first claim's ``msg_id`` (a retry).
    ``release``: undo this claim instead (the send was refused after it: its
    ``msg_id`` was never stored), for the uploads still claimed by ``msg_id``."""

    caller: User
    room: str
    ids: list[str]
    msg_id: str
    key: str
    release: bool = False
    v: int = VERSION


class ClaimReply(_Payload):
    """The message id to publish under and the attachments, in the order asked."""

    msg_id: str
    attachments: list[Attachment]
    v: int = VERSION


def encode(payload: msgspec.Struct) -> bytes:
    return msgspec.json.encode(payload)


class SessionEntry(_Payload):
    """One live connection of a user: on ``sessions.list.<user>`` the one just
    opened (the question), in a :class:`SessionList` those a gateway holds."""

    user: str
    session: str
    node: str
    opened_ms: int
    v: int = VERSION


class SessionList(_Payload):
    """A gateway's answer to ``sessions.list.<user>`` (asked for ``session``):
    the other sessions of ``user`` it holds. Gateways holding none stay silent."""

    user: str
    session: str
    sessions: list[SessionEntry]
    v: int = VERSION


class SessionKick(_Payload):
    """Asks whichever gateway holds ``session`` to close it with 4409.
    ``by_session``/``by_opened_ms``: the new connection whose check asked;
    a holder whose ``session`` is newer and still being checked keeps it
    (two connects racing: the later check, which sees both, decides)."""

    user: str
    session: str
    reason: str = "too many sessions"
    by_session: str = ""
    by_opened_ms: int = 0
    v: int = VERSION


# --- the server API (README "Server API", docs/protocol.md §5.1) --------------
# Requests of an integrator's backend, over HTTP on a gateway's internal port
# or over NATS (``svc.server.*``, answered by the gateways). Over NATS the API
# key travels in the ``Chat-Api-Key`` header; the reply is the same JSON as
# over HTTP, errors in the micro error headers (code and description).


class ServerPublish(_Payload):
    """Publish ``text`` into ``room`` as the bot ``as_name`` (sender
    ``{"id": "bot_<as_name>", "name": <as_name>}``; ``limits.BOT_NAME_PATTERN``)."""

    room: str
    text: str
    as_name: str = msgspec.field(name="as")
    client_msg_id: str | None = None
    v: int = VERSION


class ServerPublished(_Payload):
    """Stored in the chat stream: its ``seq`` in the room, ``msg_id``, ``ts``."""

    room: str
    msg_id: str
    seq: int
    ts: str
    sender: User
    v: int = VERSION


class ServerUserRef(_Payload):
    """A user by id or by name (``disconnect``, ``disable``)."""

    user: str
    v: int = VERSION


class ServerDisconnected(_Payload):
    """The user whose sockets every gateway was told to close."""

    user: User
    v: int = VERSION


class ServerDisabled(_Payload):
    """The account disabled and how many login sessions that ended."""

    user: User
    disabled: bool
    sessions: int = 0
    v: int = VERSION


class ServerRoomRef(_Payload):
    """One room (``presence``, ``members``)."""

    room: str
    v: int = VERSION


class ServerPresence(_Payload):
    """Who is in ``room`` now (every gateway's sockets, from presence-service)."""

    room: str
    users: list[User]
    v: int = VERSION


class ServerMembers(_Payload):
    """The room's members (history-service), each with ``online``."""

    room: str
    members: list[MemberView]
    v: int = VERSION


class DirectoryRequest(_Payload):
    """Every room, newest first, cursor-paged (``svc.rooms.directory``,
    ``svc.server.rooms``): private rooms and DMs too."""

    limit: int = limits.ROOM_LIST_MAX
    cursor: str | None = None
    v: int = VERSION


class RosterRequest(_Payload):
    """One room with its members, whoever asks (``svc.rooms.roster``): the
    server API's trusted read; unknown → ``not_found``."""

    room: str
    v: int = VERSION


class ServerDisconnectNotice(_Payload):
    """On ``sessions.disconnect.<user>``: every gateway closes the user's
    sockets with 4403 (docs/protocol.md §4)."""

    user: str
    reason: str = "disconnected by the server"
    v: int = VERSION
