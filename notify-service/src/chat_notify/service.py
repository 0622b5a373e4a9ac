"""The notify Component: what ``chat_kit.runtime`` starts and stops.

Start: the PostgreSQL pool and migrations (schema ``notify``) → the webhook
and the dead-letter stream (only when ``CHAT_NOTIFY_WEBHOOK_URL`` is set;
else one log line and every record is acked unsent) → one consumer per chat
stream (partition), set up in the background until the stream exists → the
``notify`` micro service (``svc.notify.level``). Stop in reverse; NATS is
drained by the runtime afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from nats.micro.service import Service
from starlette.routing import BaseRoute

from chat_contract import rpc
from chat_kit.bus import serves, start_service
from chat_kit.db import create_pool, migrate
from chat_kit.logs import event
from chat_kit.runtime import Runtime
from chat_kit.stream import StreamSettings

from . import __version__
from .config import NotifySettings
from .consumer import NotifyConsumer
from .directory import Directory
from .endpoints import LevelEndpoint
from .levels import SCHEMA, LevelStore
from .notifier import Notifier
from .webhook import DeadLetters, Webhook

log = logging.getLogger("chat_notify")

SERVICE = "notify"


class NotifyComponent:
    def __init__(self, settings: NotifySettings, stream: StreamSettings | None = None) -> None:
        self.settings = settings
        self.stream = stream
        self._pool: asyncpg.Pool | None = None
        self._webhook: Webhook | None = None
        self._service: Service | None = None
        self.consumers: list[NotifyConsumer] = []
        self.notifier: Notifier | None = None

    def is_ready(self) -> bool:
        return bool(self.consumers) and all(c.is_ready() for c in self.consumers)

    async def start(self, rt: Runtime) -> None:
        s = self.settings
        timeout = rt.settings.request_timeout
        self._pool = pool = await create_pool(s.database_url, max_size=s.db_pool,
                                              stop=rt.stopping)
        await migrate(pool, SCHEMA, "chat_notify")
        store = LevelStore(pool)
        directory = Directory(rt.nc, timeout, s.cache_ttl)
        if s.enabled:
            dead = DeadLetters(rt.nc, rt.nc.jetstream(timeout=timeout), s)
            await _retrying(dead.ensure, rt.stopping, "dead-letter stream setup failed")
            self._webhook = Webhook(s, dead)
            event(log, "webhook enabled", url=_redacted(s.webhook_url),
                  max_attempts=s.max_attempts)
        else:
            event(log, "webhook disabled: CHAT_NOTIFY_WEBHOOK_URL is not set; "
                  "records are acked unsent", logging.WARNING)
        self.notifier = Notifier(directory, store, self._webhook, text_max=s.text_max,
                                 max_age=s.max_age)
        stream = self.stream or dataclasses.replace(StreamSettings.from_env(),
                                                    replicas=rt.settings.stream_replicas)
        for name in stream.names():
            consumer = NotifyConsumer(rt.nc, self.notifier.handle, stream=stream, name=name,
                                      concurrency=s.concurrency,
                                      max_ack_pending=s.max_ack_pending, timeout=timeout)
            consumer.start()
            self.consumers.append(consumer)
        rt.checks.append(self.is_ready)
        levels = LevelEndpoint(directory, store)
        self._service = await start_service(rt.nc, SERVICE, __version__, dict([
            serves(SERVICE, rpc.NOTIFY_LEVEL, levels.level),
        ]))

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None
        await asyncio.gather(*(c.stop() for c in self.consumers))
        if self._webhook is not None:
            await self._webhook.close()
            self._webhook = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5.0)
            except TimeoutError:
                with contextlib.suppress(Exception):
                    self._pool.terminate()
            self._pool = None

    def routes(self) -> list[BaseRoute]:
        return []  # /healthz, /readyz and /metrics come from chat_kit


async def _retrying(step: Callable[[], Awaitable[None]], stopping: asyncio.Event,
                    what: str) -> None:
    """``step`` until it succeeds (JetStream still electing, NATS away), or we stop."""
    delay = 0.1
    while True:
        try:
            await step()
            return
        except Exception as exc:
            if stopping.is_set():
                raise
            event(log, what, logging.WARNING, error=repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _redacted(url: str) -> str:
    """The URL without credentials or query (they may hold a token)."""
    head, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{head}{sep}{host}/…" if sep else "…"
