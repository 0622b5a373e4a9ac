"""POST a notification to the webhook, with retries; dead letters for the rest.

:class:`Webhook` sends one :class:`~.payload.Notification` until the receiver
accepts it (2xx), refuses it (another 3xx/4xx: not retried) or
``CHAT_NOTIFY_MAX_ATTEMPTS`` attempts failed (connection errors, timeouts,
5xx, 429), waiting :func:`.backoff.delay` between attempts (a ``Retry-After``
of a 429/503 is honoured up to the cap). Each attempt is signed anew
(:mod:`.signing`) and carries ``X-Chat-Delivery: <msg_id>:<user id>``, the
same for every attempt and every redelivery: the receiver's idempotency key.

A notification that failed for good is published to the dead-letter stream
(:class:`DeadLetters`): ``NOTIFY_DEAD``, subject ``notify.dead.<user id>``,
bounded by ``CHAT_NOTIFY_DEAD_MAX_AGE`` and ``CHAT_NOTIFY_DEAD_MAX_BYTES``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from chat_contract import subjects
from chat_kit import bus
from chat_kit.logs import event

from . import metrics, signing
from .backoff import delay, retry_after, verdict
from .config import NotifySettings
from .payload import DeadLetter, Notification, encode

log = logging.getLogger("chat_notify.webhook")

DELIVERY_HEADER = "X-Chat-Delivery"
USER_AGENT = "chat-notify/0.1"
# Bytes of a response body read (to keep the connection); the rest is dropped.
BODY_READ_MAX = 64 * 1024
DEAD_DUPLICATE_WINDOW = 120.0


def dead_stream_config(settings: NotifySettings) -> StreamConfig:
    return StreamConfig(
        name=subjects.NOTIFY_DEAD_STREAM,
        subjects=[f"{subjects.NOTIFY_DEAD_PREFIX}.*"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=settings.common.stream_replicas,
        max_age=settings.dead_max_age,
        max_bytes=settings.dead_max_bytes,
        duplicate_window=min(DEAD_DUPLICATE_WINDOW, settings.dead_max_age),
    )


class DeadLetters:
    """The dead-letter stream: created when missing (never changed), appended to."""

    def __init__(self, nc: NATS, js: JetStreamContext, settings: NotifySettings) -> None:
        self._nc = nc
        self._js = js
        self._settings = settings

    async def ensure(self) -> None:
        try:
            await self._js.stream_info(subjects.NOTIFY_DEAD_STREAM)
        except NotFoundError:
            try:
                await self._js.add_stream(dead_stream_config(self._settings))
                event(log, "dead-letter stream created", stream=subjects.NOTIFY_DEAD_STREAM)
            except BadRequestError:
                await self._js.stream_info(subjects.NOTIFY_DEAD_STREAM)  # made meanwhile

    async def publish(self, letter: DeadLetter) -> None:
        """Stored, or :class:`ChatError` ``unavailable`` (the record is retried)."""
        n = letter.notification
        await bus.publish_durable(self._nc, subjects.notify_dead_subject(n.user.id),
                                  encode(letter), self._settings.common.request_timeout,
                                  headers={subjects.HDR_MSG_ID: n.key})


@dataclass
class Outcome:
    delivered: bool
    attempts: int
    status: int | None = None
    reason: str = ""
    error: str = ""


def failure_reason(status: int | None, error: str) -> str:
    if status is None:
        return "timeout" if "Timeout" in error else "connect"
    if status == 429:
        return "http_429"
    return f"http_{status // 100}xx"


def now_rfc3339() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class Webhook:
    def __init__(self, settings: NotifySettings, dead: DeadLetters,
                 rand: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._s = settings
        self._dead = dead
        self._rand = rand
        self._sleep = sleep
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._client = httpx.AsyncClient(
            timeout=settings.webhook_timeout, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=settings.webhook_concurrency,
                                max_keepalive_connections=settings.webhook_concurrency),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"})

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, body: bytes, key: str) -> tuple[int | None, str | None, str]:
        """One signed attempt: (status or None, Retry-After, error text)."""
        headers = {**signing.sign(self._s.webhook_secret, body, time.time()),
                   DELIVERY_HEADER: key}
        async with self._slots:
            try:
                async with self._client.stream("POST", self._s.webhook_url, content=body,
                                               headers=headers) as resp:
                    read = 0
                    async for chunk in resp.aiter_raw():
                        read += len(chunk)
                        if read > BODY_READ_MAX:
                            break
                    return resp.status_code, resp.headers.get("retry-after"), ""
            except httpx.HTTPError as exc:
                return None, None, f"{type(exc).__name__}: {exc}"

    async def deliver(self, n: Notification, stored_at: float | None = None) -> Outcome:
        """Send ``n`` until accepted, refused or out of attempts; dead-letter a failure."""
        body = encode(n)
        s = self._s
        status: int | None = None
        error = ""
        attempt = 0
        while attempt < s.max_attempts:
            attempt += 1
            status, after, error = await self._post(body, n.key)
            result = verdict(status)
            metrics.ATTEMPTS.labels(result).inc()
            if result == "delivered":
                metrics.SENT.labels(n.type).inc()
                if stored_at is not None:
                    metrics.LATENCY.observe(max(0.0, time.time() - stored_at))
                return Outcome(True, attempt, status)
            if result == "refused" or attempt >= s.max_attempts:
                break
            wait = delay(attempt, s.backoff_base, s.backoff_cap, self._rand)
            hinted = retry_after(after, s.backoff_cap)
            await self._sleep(max(wait, hinted) if hinted is not None else wait)
        reason = failure_reason(status, error)
        metrics.FAILED.labels(reason).inc()
        await self._dead.publish(DeadLetter(notification=n, reason=reason, attempts=attempt,
                                            status=status, error=error[:500],
                                            failed_at=now_rfc3339()))
        metrics.DEAD_LETTERED.inc()
        event(log, "notification dead-lettered", logging.WARNING, user=n.user.id,
              msg_id=n.msg_id, reason=reason, attempts=attempt, status=status)
        return Outcome(False, attempt, status, reason, error)
