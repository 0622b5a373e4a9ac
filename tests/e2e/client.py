"""A small protocol client for tests: REST helpers and a WebSocket session
that matches acks to requests and queues every other event."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
from waiting import QUIET, scaled
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = scaled(10.0)  # one request, one REST call, one awaited event


class RequestFailed(Exception):
    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code = frame.get("code")


async def register_and_login(base_url: str, username: str,
                             password: str = "correct horse battery") -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http:
        r = await http.post("/v1/auth/register", json={"username": username, "password": password})
        assert r.status_code == 201, r.text
        user = r.json()["user"]
        r = await http.post("/v1/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return {"user": user, **r.json()}


class Session:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.welcome: dict[str, Any] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    @classmethod
    async def open(cls, url: str, token: str | None = None, **kwargs: Any) -> Session:
        ws = await connect(f"{url}?token={token}" if token else url, max_size=None, **kwargs)
        session = cls(ws)
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert first["type"] == "welcome", first
        session.welcome = first
        session._reader = asyncio.create_task(session._read())
        return session

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                rid = frame.get("id")
                if frame["type"] in ("ack", "error") and rid in self._pending:
                    self._pending.pop(rid).set_result(frame)
                else:
                    await self.events.put(frame)
        except ConnectionClosed:
            pass  # the close code is what tests look at
        finally:
            self.close_code = self.ws.close_code
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"closed {self.close_code}"))

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.ws.send(json.dumps({"type": type_, "id": rid, **fields}, ensure_ascii=False))
        frame = await asyncio.wait_for(fut, TIMEOUT)
        if frame["type"] == "error":
            raise RequestFailed(frame)
        return frame

    async def next_event(self, type_: str = "message", timeout: float = TIMEOUT) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.events.get(), timeout)
            if frame["type"] == type_:
                return frame

    async def messages(self, n: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        return [await self.next_event("message", timeout) for _ in range(n)]

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


# --- helpers added for the rooms tests (issue 3) ---------------------------


def user_id(user: dict[str, Any]) -> str:
    """The id in a register_and_login result."""
    return str(user["user"]["id"])


def expect_error(r: httpx.Response, status: int, code: str) -> None:
    """A REST error: this status and ``{"error":{"code": code}}``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code, r.text


def rest(base_url: str, token: str | None = None) -> httpx.AsyncClient:
    """An HTTP client for the REST API, authenticated with ``token`` if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=TIMEOUT)


async def refused(session: Session, type_: str, **fields: Any) -> str | None:
    """The error code a request is refused with (AssertionError if it is acked)."""
    try:
        ack = await session.request(type_, **fields)
    except RequestFailed as exc:
        return exc.code
    raise AssertionError(f"{type_} {fields} was acked: {ack}")


async def collect(session: Session, seconds: float = QUIET) -> list[dict[str, Any]]:
    """Every event that arrives within ``seconds`` (plus what is already queued).

    A negative check (nothing more arrives) listens for the default
    ``waiting.QUIET``; a given ``seconds`` is not scaled.
    """
    out: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            out.append(await asyncio.wait_for(session.events.get(), left))
        except TimeoutError:
            break
    while not session.events.empty():
        out.append(session.events.get_nowait())
    return out


async def through(session: Session, msg_id: str, timeout: float = TIMEOUT
                  ) -> list[dict[str, Any]]:
    """Every event ``session`` receives up to and including the message ``msg_id``."""
    got: list[dict[str, Any]] = []
    while not got or (got[-1]["type"], got[-1].get("msg_id")) != ("message", msg_id):
        got.append(await asyncio.wait_for(session.events.get(), timeout))
    return got


def logged_errors(stack: Any) -> list[str]:
    """Lines at level error/critical, or tracebacks, in the logs of a running stack."""
    bad = []
    for service in stack.services.values():
        text = service.log_path.read_text(errors="replace") if service.log_path.exists() else ""
        for line in text.splitlines():
            low = line.lower()
            if ('"level":"error"' in low or '"level":"critical"' in low
                    or '"exc":' in line or line.startswith("Traceback")):
                bad.append(f"{service.name}: {line[:500]}")
    return bad
