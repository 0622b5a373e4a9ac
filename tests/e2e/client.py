"""The e2e tests' protocol client: REST helpers and ``Session``, a thin adapter
over ``chat_client.ChatClient`` (clients/python) that matches acks to
requests and queues every other frame as the decoded JSON object.

A ``Session`` is a plain socket (``resilient=False``): no reconnect, no
rejoin, no filtering — the tests look at exactly what the server sends.
``session.ws`` stays the raw socket for tests of the server's answer to a bad
client (protocol violations, oversize frames); bad handshakes use
``websockets`` or tests/e2e/hardening.py's ``RawWs`` directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from waiting import QUIET, scaled
from websockets.asyncio.client import ClientConnection

from chat_client import ChatClient, ChatRequestError

TIMEOUT = scaled(10.0)  # one request, one REST call, one awaited event


class RequestFailed(ChatRequestError):
    """An ``error`` answer: ``code`` (an ``ErrorCode``, equal to its string) and the ``frame``."""

    @classmethod
    def of(cls, exc: ChatRequestError) -> RequestFailed:
        return cls(exc.code, exc.message, exc.retry_after, exc.frame)


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
    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.welcome: dict[str, Any] = {}

    @property
    def ws(self) -> ClientConnection:
        assert self.client.ws is not None
        return self.client.ws

    @property
    def _reader(self) -> asyncio.Task[None] | None:
        return self.client.reader_task

    @property
    def close_code(self) -> int | None:
        task = self.client.reader_task
        return self.client.close_code if task is not None and task.done() else None

    @classmethod
    async def open(cls, url: str, token: str | None = None, **kwargs: Any) -> Session:
        client = ChatClient(ws_url=url, token=token or None, resilient=False,
                            request_timeout=TIMEOUT, queue_events=False, connect_kwargs=kwargs)
        session = cls(client)
        client.on_frame = session.events.put_nowait
        await client.connect()
        session.welcome = client.welcome_frame
        return session

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        try:
            return await self.client.request_raw(type_, **fields)
        except ChatRequestError as exc:
            raise RequestFailed.of(exc) from None

    async def next_event(self, type_: str = "message", timeout: float = TIMEOUT) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.events.get(), timeout)
            if frame["type"] == type_:
                return frame

    async def messages(self, n: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        return [await self.next_event("message", timeout) for _ in range(n)]

    async def close(self) -> None:
        await self.client.close()


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
