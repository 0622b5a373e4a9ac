"""One WebSocket session's rules, without I/O (docs/protocol.md §3).

A :class:`Session` turns what a socket received (text, binary, the passing
of time) into replies to write, calls to make and a close to perform, and
takes the calls' results back — the way python-websockets' protocol objects
are driven by their I/O layer. It never awaits: :mod:`.endpoint` reads the
socket, feeds the session, makes its calls (:mod:`.handlers`, the token
verifier) and writes what it returns. So every per-socket rule is here:

- authentication: a token from the upgrade, or a first ``auth`` frame
  within ``auth_timeout`` (anything else before it is ``unauthorized``); a
  bad token closes with 4401; ``welcome``, then the first-frame ``auth``'s
  ack; a later ``auth`` moves the expiry (same user only); a token that
  lapses unrefreshed closes with 4401;
- decoding (``bad_request``), and the checks each frame allows without a
  round trip: joined rooms, text size (``too_large``), archived rooms
  (read-only), the ``send`` bucket (``rate_limited``: sends, edits, deletes and
  reactions alike), the ``join``/``leave``
  bucket (``rate_limited``: each costs an access check, subscriptions and a
  presence write), ``msg_id`` length, at most ``max_rooms`` joined rooms;
- answers: the ack of every request id, errors with the request id, a
  frame's failure never ends the session;
- strikes: a client that keeps sending refused frames (bad_request,
  too_large, rate_limited) is closed with 1008;
- counts: every frame answered, by type and outcome
  (``chat_ws_requests_total``, docs/protocol.md §7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import msgspec

from chat_contract import frames, limits
from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, CloseCode, ErrorCode
from chat_contract.events import Error, Pong, User, Welcome, encode, encode_ack
from chat_kit import metrics
from chat_kit.audit import AuditLimiter
from chat_kit.logs import audit

from .limits import StrikeCounter, TokenBucket

log = logging.getLogger("chat_gateway.session")

# Refusals that are the client's fault and count as strikes (README "Limits").
STRIKES = frozenset({ErrorCode.BAD_REQUEST, ErrorCode.RATE_LIMITED, ErrorCode.TOO_LARGE})
# Rate-limit refusals are audited at most once per user and window.
_audits = AuditLimiter(window=10.0)


@dataclass(frozen=True)
class Rules:
    """The session's settings (CHAT_GATEWAY_*, README "Configuration")."""

    node: str
    heartbeat: int
    auth_timeout: float = 5.0
    max_rooms: int = 100
    send_rate: float = 10.0
    send_burst: int = 20
    abuse_strikes: int = 30
    abuse_window: float = 10.0
    # join and leave frames together: a reconnect re-joining max_rooms rooms fits the burst
    join_rate: float = 5.0
    join_burst: int = 100


# --- calls: what the I/O layer makes for the session, then hands back ------------------


@dataclass(slots=True)
class Call:
    """A call to make; answered with :meth:`Session.succeeded` or :meth:`Session.failed`.
    ``id``: the request id to ack (None: no ack); ``frame``: its frame type."""

    frame: ClassVar[str] = ""
    id: str | None


@dataclass(slots=True)
class Verify(Call):
    """Verify an access token (its claims are the result)."""

    frame: ClassVar[str] = "auth"
    token: str
    reauth: bool  # an ``auth`` frame of an open session (else: the session's first)
    counted: bool = True  # an ``auth`` frame (not the upgrade's token)


@dataclass(slots=True)
class JoinRoom(Call):
    frame: ClassVar[str] = "join"
    room: str
    password: str | None
    since: int | None


@dataclass(slots=True)
class LeaveRoom(Call):
    frame: ClassVar[str] = "leave"
    room: str


@dataclass(slots=True)
class SendMessage(Call):
    frame: ClassVar[str] = "send"
    room: str
    text: str  # trimmed and checked
    reply_to: str | None
    client_msg_id: str | None
    thread: str | None = None  # a thread root: history-service checks it
    attachments: list[str] | None = None  # upload ids: history-service claims them
    received: float = 0.0  # monotonic: when the frame arrived (chat_send_ack_seconds)


@dataclass(slots=True)
class ChangeMessage(Call):
    room: str
    msg_id: str
    action: Literal["edit", "delete"]
    text: str | None  # an edit's new text, checked


@dataclass(slots=True)
class ReactTo(Call):
    frame: ClassVar[str] = "react"
    room: str
    msg_id: str
    emoji: str  # one emoji sequence (checked by decode_frame)
    on: bool


@dataclass(slots=True)
class MarkRead(Call):
    frame: ClassVar[str] = "read"
    room: str
    seq: int


@dataclass(slots=True)
class SetTyping(Call):
    frame: ClassVar[str] = "typing"
    room: str
    state: str


@dataclass(slots=True)
class Members(Call):
    frame: ClassVar[str] = "presence"
    room: str


@dataclass(slots=True)
class FetchHistory(Call):
    frame: ClassVar[str] = "history"
    room: str
    before: int | None
    after: int | None
    limit: int


# --- counting (chat_ws_requests_total) -----------------------------------------------

# Each frame class's ``type`` tag.
_FRAME_TYPES: dict[type, str] = {
    cls: str(cls.__struct_config__.tag)
    for cls in (frames.Auth, frames.Join, frames.Leave, frames.Send, frames.Edit, frames.Delete,
                frames.React, frames.Typing, frames.Read, frames.History, frames.Presence,
                frames.Ping)}


class _TypeOnly(msgspec.Struct):
    type: Any = None


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def frame_type_of(text: str) -> str:
    """The type of a frame that failed to decode, when it names a known one, else
    ``unknown`` (the label stays bounded). Refusals only: never on the hot path."""
    try:
        found = _type_decoder.decode(text).type
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return "unknown"
    return found if isinstance(found, str) and found in metrics.WS_REQUEST_TYPES else "unknown"


def _type_of(call: Call) -> str:
    return call.action if isinstance(call, ChangeMessage) else call.frame


# --- the session -----------------------------------------------------------------------


class Session:
    """See the module docstring. ``joined``: the socket's rooms (read only here;
    the room hub changes them); ``archived``: whether a room is read-only now.
    Times: ``now`` is monotonic seconds, ``wall`` is Unix seconds (token expiry)."""

    def __init__(self, rules: Rules, session_id: str, joined: Collection[str],
                 archived: Callable[[str], bool], now: float, remote: str = "") -> None:
        self.rules = rules
        self.id = session_id
        self.joined = joined
        self.archived = archived
        self.remote = remote
        self.user: User | None = None  # set once authenticated
        self.sid: str | None = None  # the login session of that token (its sid claim)
        self.token_exp = 0.0
        self.auth_deadline = now + rules.auth_timeout
        self.bucket = TokenBucket(rules.send_rate, rules.send_burst, now)
        self.join_bucket = TokenBucket(rules.join_rate, rules.join_burst, now)
        self.strikes = StrikeCounter(rules.abuse_strikes, rules.abuse_window)
        # (code, reason) once the session must close; nothing more is sent then.
        self.close: tuple[int, str] | None = None
        self._verifying = False
        self._out: list[bytes] = []
        self._calls: list[Call] = []

    # --- outputs ----------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Encoded server frames to write, in order (then forgotten here)."""
        out = self._out
        if out:
            self._out = []
        return out

    def calls_to_make(self) -> list[Call]:
        """Calls to make, in order; answer each before feeding the next frame."""
        calls = self._calls
        if calls:
            self._calls = []
        return calls

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def waiting_for_auth(self) -> bool:
        """True while the session needs an ``auth`` frame (no token being verified)."""
        return self.user is None and not self._verifying and self.close is None

    def timeout(self, now: float, wall: float) -> float:
        """Seconds until :meth:`tick` has something to decide."""
        if self.user is None:
            return max(0.0, self.auth_deadline - now)
        return max(0.0, self.token_exp - wall)

    # --- inputs -----------------------------------------------------------------------

    def connect(self, token: str | None) -> None:
        """The socket was accepted; ``token`` from the upgrade (query or header), if any."""
        if token:
            self._verify(token, None)

    def tick(self, now: float, wall: float) -> None:
        """Time passed: the auth timeout, the token's expiry."""
        if self.close is not None:
            return
        if self.user is None:
            if not self._verifying and now >= self.auth_deadline:
                self.close = (CloseCode.UNAUTHORIZED, "missing token")
        elif wall >= self.token_exp:
            self.close = (CloseCode.UNAUTHORIZED, "token expired")

    def receive_binary(self, now: float) -> None:
        if self.close is not None:
            return
        if self.user is None:
            metrics.ws_request("unknown", ErrorCode.UNAUTHORIZED).inc()
            self._reply_error(ErrorCode.UNAUTHORIZED, "authenticate first", None)
            return
        metrics.WS_MESSAGES_IN.inc()
        metrics.ws_request("unknown", ErrorCode.BAD_REQUEST).inc()
        self._reply_error(ErrorCode.BAD_REQUEST, "binary frames are not accepted", None)
        self._strike(now, "binary frame")

    def receive_text(self, text: str, now: float) -> None:
        if self.close is not None:
            return
        if self.user is None:
            self._before_auth(text)
            return
        metrics.WS_MESSAGES_IN.inc()
        try:
            frame = frames.decode_frame(text)
        except ChatError as exc:
            metrics.ws_request(frame_type_of(text), exc.code).inc()
            self._refuse(exc, frames.request_id_of(text), now)
            return
        try:
            self._accept(frame, now)
        except ChatError as exc:
            metrics.ws_request(_FRAME_TYPES[type(frame)], exc.code).inc()
            self._refuse(exc, frame.id, now)

    def succeeded(self, call: Call, result: Any) -> None:
        """``call`` was made: ``result`` is its ack fields (a Verify: the claims)."""
        if isinstance(call, Verify):
            self._verified(call, result)
            return
        metrics.ws_request(_type_of(call), "ok").inc()
        if call.id is not None:
            self._out.append(encode_ack(call.id, result))

    def failed(self, call: Call, exc: BaseException, now: float) -> None:
        """``call`` failed: a ChatError is the client's answer, anything else ``internal``."""
        if not isinstance(call, Verify) or call.counted:
            outcome = exc.code if isinstance(exc, ChatError) else ErrorCode.INTERNAL
            metrics.ws_request(_type_of(call), ErrorCode.UNAUTHORIZED if (
                isinstance(call, Verify) and not call.reauth) else outcome).inc()
        if isinstance(call, Verify) and not call.reauth:
            self._verifying = False
            reason = exc.message if isinstance(exc, ChatError) else "invalid token"
            audit(log, "token rejected", reason=reason, remote=self.remote or None)
            self.close = (CloseCode.UNAUTHORIZED, reason[:100])
        elif isinstance(exc, ChatError):
            self._refuse(exc, call.id, now)
        else:
            log.error("frame handler failed", exc_info=exc,
                      extra={"fields": {"session": self.id}})
            self._reply_error(ErrorCode.INTERNAL, "internal error", call.id)

    # --- authentication ---------------------------------------------------------------

    def _before_auth(self, text: str) -> None:
        """Until authenticated only an ``auth`` frame is read; anything else is told so."""
        if self._verifying:
            return  # frames after the auth frame wait for its verdict (not read)
        try:
            frame: frames.ClientFrame | None = frames.decode_frame(text)
        except ChatError:
            frame = None
        if isinstance(frame, frames.Auth):
            if not frame.token:
                metrics.ws_request("auth", ErrorCode.UNAUTHORIZED).inc()
                self.close = (CloseCode.UNAUTHORIZED, "missing token")
            else:
                self._verify(frame.token, frame.id, counted=True)
            return
        metrics.ws_request(frame_type_of(text), ErrorCode.UNAUTHORIZED).inc()
        self._reply_error(ErrorCode.UNAUTHORIZED, "authenticate first", frames.request_id_of(text))

    def _verify(self, token: str, request_id: str | None, counted: bool = False) -> None:
        self._verifying = True
        self._calls.append(Verify(id=request_id, token=token, reauth=False, counted=counted))

    def _verified(self, call: Verify, claims: AccessClaims) -> None:
        if call.reauth:
            assert self.user is not None
            if claims.sub != self.user.id:
                metrics.ws_request("auth", ErrorCode.FORBIDDEN).inc()
                self._refuse(ChatError(ErrorCode.FORBIDDEN, "token belongs to another user"),
                             call.id, None)
                return
            self.token_exp = claims.exp
            metrics.ws_request("auth", "ok").inc()
            if call.id is not None:
                self._out.append(encode_ack(call.id, {}))
            return
        self._verifying = False
        self.user = User(id=claims.sub, name=claims.name)
        self.sid = claims.sid
        self.token_exp = claims.exp
        self._out.append(encode(Welcome(session=self.id, user=self.user, node=self.rules.node,
                                        heartbeat=self.rules.heartbeat)))
        if call.counted:
            metrics.ws_request("auth", "ok").inc()
        if call.id is not None:  # a first-frame auth is a request like any other
            self._out.append(encode_ack(call.id, {}))

    # --- frames of an open session ----------------------------------------------------

    def _accept(self, frame: frames.ClientFrame, now: float) -> None:
        """Apply the rules ``frame`` allows without a round trip; queue its call."""
        calls = self._calls
        match frame:
            case frames.Send():
                self._require_joined(frame.room)
                text = frames.check_text(frame.text, may_be_empty=bool(frame.attachments))
                self._require_writable(frame.room)
                self._take_token(now)
                calls.append(SendMessage(id=frame.id, room=frame.room, text=text,
                                         reply_to=frame.reply_to,
                                         client_msg_id=frame.client_msg_id,
                                         thread=frame.thread,
                                         attachments=frame.attachments or None,
                                         received=now))
            case frames.Join():
                self._take_join_token(now)
                joined = self.joined
                if frame.room not in joined and len(joined) >= self.rules.max_rooms:
                    raise ChatError(ErrorCode.FORBIDDEN,
                                    f"at most {self.rules.max_rooms} joined rooms")
                calls.append(JoinRoom(id=frame.id, room=frame.room, password=frame.password,
                                      since=frame.since))
            case frames.Leave():
                self._take_join_token(now)
                calls.append(LeaveRoom(id=frame.id, room=frame.room))
            case frames.History():
                calls.append(FetchHistory(id=frame.id, room=frame.room, before=frame.before,
                                          after=frame.after, limit=frame.limit))
            case frames.Auth():
                calls.append(Verify(id=frame.id, token=frame.token, reauth=True))
            case frames.Presence():
                self._require_joined(frame.room)
                calls.append(Members(id=frame.id, room=frame.room))
            case frames.Ping():
                metrics.ws_request("ping", "ok").inc()
                self._out.append(encode(Pong()))  # never acked: the pong is the answer
            case frames.Typing():
                self._require_joined(frame.room)
                # Acked only if it carries an id (§3.2: every id is answered).
                calls.append(SetTyping(id=frame.id, room=frame.room, state=frame.state))
            case frames.Edit():
                self._change(frame.id, frame.room, frame.msg_id, "edit", frame.text, now)
            case frames.Delete():
                self._change(frame.id, frame.room, frame.msg_id, "delete", None, now)
            case frames.React():
                self._react(frame, now)
            case frames.Read():
                self._require_joined(frame.room)
                assert frame.seq is not None  # decode_frame refuses a read without seq
                calls.append(MarkRead(id=frame.id, room=frame.room, seq=frame.seq))

    def _change(self, request_id: str | None, room: str, msg_id: str,
                action: Literal["edit", "delete"], text: str | None, now: float) -> None:
        self._require_joined(room)
        if len(msg_id) > limits.MSG_ID_MAX:  # no message has such an id (§8: unknown → not_found)
            raise ChatError(ErrorCode.NOT_FOUND,
                            f"no message {msg_id[:limits.MSG_ID_MAX]}… in {room}")
        if text is not None:
            text = frames.check_text(text)
            self._require_writable(room)  # deleting one's own message stays possible (privacy)
        self._take_token(now)
        self._calls.append(ChangeMessage(id=request_id, room=room, msg_id=msg_id, action=action,
                                         text=text))

    def _react(self, frame: frames.React, now: float) -> None:
        """A reaction is written like a message: joined, writable, the send bucket."""
        room = frame.room
        self._require_joined(room)
        if len(frame.msg_id) > limits.MSG_ID_MAX:  # names no message (as for edits)
            raise ChatError(ErrorCode.NOT_FOUND,
                            f"no message {frame.msg_id[:limits.MSG_ID_MAX]}… in {room}")
        self._require_writable(room)
        self._take_token(now)
        assert frame.on is not None  # decode_frame refuses a react without on
        self._calls.append(ReactTo(id=frame.id, room=room, msg_id=frame.msg_id,
                                   emoji=frame.emoji, on=frame.on))

    def _require_joined(self, room: str) -> None:
        if room not in self.joined:
            raise ChatError(ErrorCode.FORBIDDEN, f"not joined to room {room}")

    def _require_writable(self, room: str) -> None:
        if self.archived(room):
            raise ChatError(ErrorCode.FORBIDDEN, f"room {room} is archived (read-only)")

    def _take_token(self, now: float) -> None:
        if not self.bucket.take(now):
            raise ChatError(ErrorCode.RATE_LIMITED, "too many messages, slow down")

    def _take_join_token(self, now: float) -> None:
        bucket = self.join_bucket
        if not bucket.take(now):
            wait = bucket.retry_after()
            raise ChatError(ErrorCode.RATE_LIMITED,
                            f"too many joins and leaves, retry in {wait:.1f} s")

    # --- refusals ---------------------------------------------------------------------

    def _refuse(self, exc: ChatError, request_id: str | None, now: float | None) -> None:
        if exc.code == ErrorCode.FORBIDDEN:
            assert self.user is not None
            audit(log, "forbidden", user=self.user.id, reason=exc.message)
        self._reply_error(exc.code, exc.message, request_id)
        if exc.code in STRIKES and now is not None:
            if exc.code == ErrorCode.RATE_LIMITED:
                metrics.WS_DROPPED.labels("rate_limited").inc()
                assert self.user is not None
                _audits.audit(log, "rate limited", self.user.id, now, user=self.user.id,
                              session=self.id, remote=self.remote or None, reason=exc.message)
            self._strike(now, exc.code.value)

    def _reply_error(self, code: ErrorCode, message: str, request_id: str | None) -> None:
        self._out.append(encode(Error(code=code, message=message, id=request_id)))

    def _strike(self, now: float, why: str) -> None:
        """Count a refused frame; past the abuse limit close with 1008 (README "Limits")."""
        if not self.strikes.strike(now):
            return
        metrics.WS_DROPPED.labels("abuse").inc()
        audit(log, "abusive connection closed", user=self.user.id if self.user else None,
              session=self.id, remote=self.remote, last=why, strikes=self.strikes.limit,
              window=self.strikes.window)
        self.close = (CloseCode.POLICY, "too many bad or rate-limited frames")
