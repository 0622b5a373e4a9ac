"""``ChatClient``: the chat's REST auth and WebSocket protocol over asyncio
(docs/protocol.md §2–§4), with reconnect, rejoin, gap fetch, dedupe and token refresh."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from chat_contract.acks import BY_FRAME, Ack, HistoryAck, JoinAck
from chat_contract.errors import ErrorCode
from chat_contract.events import Message, ReactionEvent, ServerEvent, Welcome, decode_event

from .logic import Backoff, CloseAction, Deduper, Gap, RoomTracker, close_action

Frame = dict[str, Any]
HISTORY_PAGE = 100


class ChatRequestError(Exception):
    """A request answered with an ``error`` frame (or a REST error body)."""

    def __init__(self, code: ErrorCode | str, message: str,
                 retry_after: float | None = None, frame: Frame | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode | str = (ErrorCode(code) if code in ErrorCode._value2member_map_
                                      else code)
        self.message = message
        self.retry_after = retry_after
        self.frame: Frame = frame if frame is not None else {}


class ChatConnectionLost(ConnectionError):
    """The socket closed while a request was waiting for its answer."""

    def __init__(self, close_code: int | None) -> None:
        super().__init__(f"closed {close_code}")
        self.close_code = close_code


class ChatClosed(Exception):
    """The client stopped for good: closed with a code that forbids reconnecting
    (1008, 4403, 4409, a refused token refresh after 4401, or ``close()``)."""

    def __init__(self, close_code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {close_code} {reason}".strip())
        self.close_code = close_code
        self.reason = reason


@dataclass
class Tokens:
    access_token: str
    refresh_token: str | None = None
    expires_at: float | None = None  # time.monotonic() when the access token expires
    lifetime: float | None = None  # its expires_in


def _ws_url(base_url: str) -> str:
    return base_url.rstrip("/").replace("http", "ws", 1) + "/ws"


class ChatClient:
    """One user's connection to the chat.

    ``resilient=True`` (the default): reconnect on 1001/1006/1011/1012/1013 with
    exponential backoff and full jitter, refresh the token on 4401 and reconnect,
    stop on 1008/4403/4409; rejoin every joined room with ``since``; fetch a
    gap from ``history`` when an event's ``prev_seq`` is above the last seq held;
    drop room events already delivered. ``resilient=False`` is one plain socket.
    """

    def __init__(self, base_url: str | None = None, *, ws_url: str | Sequence[str] | None = None,
                 token: str | None = None, refresh_token: str | None = None,
                 expires_in: float | None = None, resilient: bool = True,
                 backoff: Backoff | None = None, request_timeout: float = 10.0,
                 refresh_margin: float = 30.0, queue_events: bool = True,
                 on_event: Callable[[ServerEvent], None] | None = None,
                 on_frame: Callable[[Frame], None] | None = None,
                 connect_kwargs: Mapping[str, Any] | None = None) -> None:
        if base_url is None and ws_url is None:
            raise ValueError("base_url or ws_url is required")
        self.base_url = base_url
        # Several addresses (gateways without a load balancer): each reconnect
        # attempt tries the next one.
        urls = [ws_url] if isinstance(ws_url, str) else list(ws_url or [])
        self.ws_urls = urls or [_ws_url(base_url or "")]
        self._url_index = 0
        self.tokens: Tokens | None = None
        if token is not None:
            self._set_tokens(token, refresh_token, expires_in)
        self.resilient = resilient
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.refresh_margin = refresh_margin
        self.on_event = on_event
        self.on_frame = on_frame
        self.connect_kwargs = dict(connect_kwargs or {})
        self.welcome: Welcome | None = None
        self.welcome_frame: Frame = {}
        self.ws: ClientConnection | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.rooms: dict[str, str | None] = {}  # joined room -> its password
        self.tracker = RoomTracker()
        self.deduper = Deduper()
        self.reconnects = 0
        self.gaps_fetched: list[Gap] = []
        self._queue_events = queue_events
        self._events: asyncio.Queue[ServerEvent | ChatClosed] = asyncio.Queue()
        self._pending: dict[str, tuple[str, asyncio.Future[Frame]]] = {}
        self._ids = itertools.count(1)
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._stopped: ChatClosed | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None

    # --- REST: login and refresh (docs/protocol.md §2) -------------------------

    def _set_tokens(self, access: str, refresh: str | None, expires_in: float | None) -> None:
        expires_at = time.monotonic() + expires_in if expires_in else None
        self.tokens = Tokens(access, refresh, expires_at, expires_in)

    def http(self) -> httpx.AsyncClient:
        if self.base_url is None:
            raise ValueError("REST calls need base_url")
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.request_timeout)
        return self._http

    async def _token_call(self, path: str, body: dict[str, str]) -> Tokens:
        r = await self.http().post(path, json=body)
        if r.status_code != 200:
            raise _rest_error(r)
        pair = r.json()
        self._set_tokens(pair["access_token"], pair.get("refresh_token"), pair.get("expires_in"))
        assert self.tokens is not None
        return self.tokens

    async def register(self, username: str, password: str) -> dict[str, Any]:
        r = await self.http().post("/v1/auth/register",
                                   json={"username": username, "password": password})
        if r.status_code != 201:
            raise _rest_error(r)
        user: dict[str, Any] = r.json()["user"]
        return user

    async def login(self, username: str, password: str) -> Tokens:
        return await self._token_call("/v1/auth/login",
                                      {"username": username, "password": password})

    async def refresh(self) -> Tokens:
        """A new token pair for the refresh token; a live socket is sent the new token."""
        if self.tokens is None or self.tokens.refresh_token is None:
            raise ChatRequestError(ErrorCode.UNAUTHORIZED, "no refresh token")
        tokens = await self._token_call("/v1/auth/refresh",
                                        {"refresh_token": self.tokens.refresh_token})
        if self.ws is not None and self._connected.is_set():
            await self.request("auth", token=tokens.access_token)
        return tokens

    # --- the socket ---------------------------------------------------------------

    async def connect(self) -> Welcome:
        """Open the socket and wait for ``welcome``; then run in the background."""
        await self._open()
        self._tasks.append(asyncio.create_task(self._process()))
        if self.resilient:
            self._tasks.append(asyncio.create_task(self._supervise()))
            self._tasks.append(asyncio.create_task(self._refresh_before_expiry()))
        assert self.welcome is not None
        return self.welcome

    async def _open(self) -> None:
        url = self.ws_urls[self._url_index % len(self.ws_urls)]
        if self.tokens is not None:
            url += ("&" if "?" in url else "?") + "token=" + quote(self.tokens.access_token)
        ws = await connect(url, max_size=None, **self.connect_kwargs)
        try:
            raw = await asyncio.wait_for(ws.recv(), self.request_timeout)
        except BaseException:
            await ws.close()
            raise
        first = json.loads(raw)
        if first.get("type") != "welcome":
            await ws.close()
            raise AssertionError(first)
        self.welcome_frame = first
        self.welcome = msgspec.convert(first, Welcome)
        self.ws = ws
        self.close_code = None
        self._connected.set()
        self.reader_task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                rid = frame.get("id")
                kind = frame.get("type")
                if kind in ("ack", "error") and rid in self._pending:
                    type_, fut = self._pending.pop(rid)
                    if not fut.done():
                        fut.set_result(frame)
                    if kind == "ack" and type_ == "join" and self.resilient:
                        self._inbox.put_nowait(("joined", frame))
                    continue
                if self.on_frame is not None:
                    self.on_frame(frame)
                if self.resilient or self._queue_events or self.on_event is not None:
                    self._inbox.put_nowait(("frame", (frame, raw)))
        except ConnectionClosed:
            pass
        finally:
            self._connected.clear()
            self.close_code = ws.close_code
            for _, fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ChatConnectionLost(self.close_code))
            self._pending.clear()

    async def request(self, type_: str, timeout: float | None = None, **fields: Any) -> Ack | Frame:
        """Send one request and return its ack: the struct of chat_contract.acks
        for the request's type, else the frame as a dict. ``ChatRequestError`` on
        an ``error`` answer, ``ChatConnectionLost`` if the socket closed first."""
        frame = await self.request_raw(type_, timeout=timeout, **fields)
        ack_type = BY_FRAME.get(type_)
        if ack_type is None:
            return frame
        try:
            return msgspec.convert(frame, ack_type)
        except msgspec.ValidationError:
            return frame

    async def request_raw(self, type_: str, timeout: float | None = None,
                          **fields: Any) -> Frame:
        """Like :meth:`request`, the ack as the decoded JSON object."""
        limit = self.request_timeout if timeout is None else timeout
        if self.resilient and not self._connected.is_set():
            await asyncio.wait_for(self._wait_connected(), limit)
        ws = self.ws
        if ws is None:
            raise ChatConnectionLost(self.close_code)
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (type_, fut)
        if type_ == "join" and "room" in fields:
            self.rooms.setdefault(str(fields["room"]), fields.get("password"))
        try:
            await ws.send(json.dumps({"type": type_, "id": rid, **fields}, ensure_ascii=False))
        except ConnectionClosed as exc:
            self._pending.pop(rid, None)
            raise ChatConnectionLost(ws.close_code) from exc
        try:
            frame = await asyncio.wait_for(fut, limit)
        finally:
            self._pending.pop(rid, None)
        if frame["type"] == "error":
            if type_ == "join":
                self.rooms.pop(str(fields.get("room")), None)
            raise ChatRequestError(str(frame.get("code")), str(frame.get("message", "")),
                                   frame.get("retry_after"), frame)
        if type_ == "leave":
            self.rooms.pop(str(fields.get("room")), None)
            self.tracker.forget(str(fields.get("room")))
        return frame

    async def _wait_connected(self) -> None:
        while not self._connected.is_set():
            if self._stopped is not None:
                raise self._stopped
            await self._connected.wait()

    async def send_raw(self, data: str | bytes) -> None:
        """Write a frame as given (tests of the server's answers to bad clients)."""
        if self.ws is None:
            raise ChatConnectionLost(self.close_code)
        await self.ws.send(data)

    # --- events -----------------------------------------------------------------

    def _deliver(self, event: ServerEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if self._queue_events:
            self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[ServerEvent]:
        """Every event, in order, deduplicated; ends when ``close()`` is called,
        raises :class:`ChatClosed` when the server closed the client for good."""
        while True:
            item = await self._events.get()
            if isinstance(item, ChatClosed):
                self._events.put_nowait(item)  # every later reader ends the same way
                if item.close_code == 1000 and item.reason == "closed by the client":
                    return
                raise item
            yield item

    async def next_event(self, *types: type[ServerEvent], timeout: float | None = None
                         ) -> ServerEvent:
        """The next event of one of ``types`` (any event when none given)."""
        async def wait() -> ServerEvent:
            async for event in self.events():
                if not types or isinstance(event, types):
                    return event
            raise ChatClosed(1000, "closed by the client")
        return await asyncio.wait_for(wait(), timeout or self.request_timeout)

    async def _process(self) -> None:
        while True:
            kind, item = await self._inbox.get()
            try:
                if kind == "joined":
                    await self._joined(item)
                    continue
                frame, raw = item
                try:
                    event = decode_event(raw)
                except msgspec.DecodeError:
                    continue  # a type this version does not know: on_frame saw it
                if self.resilient and isinstance(event, Message | ReactionEvent):
                    await self._room_event(event)
                else:
                    self._deliver(event)
            except (ChatConnectionLost, TimeoutError, ChatRequestError, ChatClosed):
                pass  # a gap fetch cut short: the rejoin with `since` fetches it again

    async def _room_event(self, event: Message | ReactionEvent) -> None:
        gap = self.tracker.gap_before(event)
        if gap is not None:
            await self._fetch(gap)
        self._accept(event)

    def _accept(self, event: Message | ReactionEvent) -> None:
        if self.tracker.is_old(event) or not self.deduper.first_time(event):
            return
        self.tracker.advance(event)
        self._deliver(event)

    async def _fetch(self, gap: Gap) -> None:
        """Page ``history`` from ``gap.after`` until ``gap.before`` (excluded)."""
        self.gaps_fetched.append(gap)
        after = gap.after
        while after < gap.before - 1:
            page = msgspec.convert(
                await self.request_raw("history", room=gap.room, after=after,
                                       limit=HISTORY_PAGE), HistoryAck)
            messages = page.messages
            for m in messages:
                if m.seq < gap.before:
                    self._accept(m)
            seqs = [m.seq for m in messages]
            if not seqs or max(seqs) <= after:
                break
            after = max(seqs)
            if not page.has_more:
                break
        # Whatever history had is delivered; the chain continues from here.
        if self.tracker.last_seq.get(gap.room, 0) < gap.before - 1:
            self.tracker.last_seq[gap.room] = gap.before - 1

    async def _joined(self, frame: Frame) -> None:
        try:
            ack = msgspec.convert(frame, JoinAck)
        except msgspec.ValidationError:
            return
        known = ack.room in self.tracker.last_seq
        for event in ack.missed:
            if known:
                await self._room_event(event)
            elif self.deduper.first_time(event):
                self.tracker.advance(event)
                self._deliver(event)
        held = self.tracker.last_seq.get(ack.room, 0)
        if known and held < ack.last_seq:
            await self._fetch(Gap(ack.room, held, ack.last_seq + 1))
        self.tracker.joined(ack.room, ack.last_seq)

    # --- resilience -------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            if self.reader_task is not None:
                await asyncio.gather(self.reader_task, return_exceptions=True)
            if self._stopped is not None:
                return
            action = close_action(self.close_code)
            if action is CloseAction.STOP:
                self._stop(ChatClosed(self.close_code, "closed by the server"))
                return
            refresh = action is CloseAction.REFRESH_AND_RECONNECT
            while self._stopped is None:
                await asyncio.sleep(self.backoff.next_delay())
                self._url_index += 1
                try:
                    if refresh:
                        await self._token_call_refresh()
                        refresh = False
                    await self._open()
                except ChatRequestError as exc:
                    if exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN):
                        self._stop(ChatClosed(4401, f"token refresh refused: {exc.message}"))
                        return
                    continue
                except (OSError, WebSocketException, TimeoutError, httpx.HTTPError):
                    continue
                except AssertionError:
                    continue
                self.reconnects += 1
                self.backoff.reset()
                self._tasks.append(asyncio.create_task(self._rejoin()))
                break

    async def _token_call_refresh(self) -> None:
        if self.tokens is None or self.tokens.refresh_token is None:
            raise ChatRequestError(ErrorCode.UNAUTHORIZED, "no refresh token")
        await self._token_call("/v1/auth/refresh", {"refresh_token": self.tokens.refresh_token})

    async def _rejoin(self) -> None:
        for room, password in list(self.rooms.items()):
            fields: dict[str, Any] = {"room": room}
            if password is not None:
                fields["password"] = password
            if room in self.tracker.last_seq:
                fields["since"] = self.tracker.last_seq[room]
            try:
                await self.request_raw("join", **fields)
            except ChatRequestError:
                self.rooms.pop(room, None)  # removed or archived meanwhile
            except (ChatConnectionLost, TimeoutError):
                return  # the next reconnect rejoins

    async def _refresh_before_expiry(self) -> None:
        while self._stopped is None:
            tokens = self.tokens
            if tokens is None or tokens.expires_at is None or tokens.refresh_token is None:
                return
            margin = self.refresh_margin
            if tokens.lifetime is not None:  # short-lived tokens: at a third of their life left
                margin = min(margin, tokens.lifetime / 3)
            wait = tokens.expires_at - margin - time.monotonic()
            await asyncio.sleep(max(wait, 1.0))
            if self.tokens is not tokens:
                continue  # refreshed meanwhile (a 4401)
            try:
                await self.refresh()
            except (ChatRequestError, ChatConnectionLost, TimeoutError, httpx.HTTPError):
                await asyncio.sleep(5.0)

    def _stop(self, closed: ChatClosed) -> None:
        if self._stopped is None:
            self._stopped = closed
            self._events.put_nowait(closed)
            self._connected.set()  # wake waiting requests: they raise

    async def close(self) -> None:
        self._stop(ChatClosed(1000, "closed by the client"))
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.reader_task is not None:
            await asyncio.gather(self.reader_task, return_exceptions=True)
        await asyncio.gather(*(t for t in self._tasks if t is not current),
                             return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _rest_error(r: httpx.Response) -> ChatRequestError:
    try:
        err = r.json()["error"]
        code, message = str(err["code"]), str(err.get("message", ""))
    except (ValueError, KeyError, TypeError):
        code, message = ErrorCode.INTERNAL.value, r.text[:200]
    retry = r.headers.get("retry-after")
    return ChatRequestError(code, message, float(retry) if retry else None)
