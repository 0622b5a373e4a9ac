"""The gateway's side of the bus: service requests and CHAT stream access, with one timeout.

:class:`Services` is what handlers and REST routes are given instead of the
NATS client: a request to a service endpoint declared in
:mod:`chat_contract.rpc` (subject and payload types in one place), a
durable publish to the CHAT stream, a direct read of one stored message.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from chat_contract.rpc import Rpc
from chat_kit import bus
from chat_kit.bus import PubAck

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)


class Requests(Protocol):
    """Service requests (chat_contract.rpc), with the gateway's timeout."""

    @property
    def connected(self) -> bool: ...

    async def request(self, call: Rpc[Req, Rep], payload: Req) -> Rep: ...


class Publisher(Requests, Protocol):
    """Requests, and durable publishes to the CHAT stream and direct reads of it."""

    async def publish(self, subject: str, data: bytes,
                      headers: dict[str, str] | None = None) -> PubAck: ...

    async def stored(self, stream: str, seq: int) -> RawStreamMsg: ...


class Services:
    """The :class:`Publisher` on a NATS connection."""

    def __init__(self, nc: NATS, js: JetStreamContext, timeout: float) -> None:
        self.nc = nc
        self.js = js
        self.timeout = timeout

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def request(self, call: Rpc[Req, Rep], payload: Req) -> Rep:
        """One request to a service (failures are ChatError: chat_kit.bus.call)."""
        return await bus.request(self.nc, call, payload, self.timeout)

    async def publish(self, subject: str, data: bytes,
                      headers: dict[str, str] | None = None) -> PubAck:
        """Publish to the CHAT stream; returns once it is stored."""
        return await bus.publish_durable(self.nc, subject, data, self.timeout, headers)

    async def stored(self, stream: str, seq: int) -> RawStreamMsg:
        """One stored message (NotFoundError if erased or aged out)."""
        return await self.js.get_msg(stream, seq=seq, direct=True)
