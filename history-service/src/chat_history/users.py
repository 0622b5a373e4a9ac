"""Users by id or name, from auth-service (``svc.auth.users``): invites, DMs, blocks.

auth-service owns users; this service keeps no copy beyond the member names
it records at join. Auth down → the ``unavailable`` ChatError of
:func:`chat_kit.bus.request` propagates to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable

from nats.aio.client import Client as NATS

from chat_contract import rpc
from chat_contract.bus import UsersRequest
from chat_contract.events import User
from chat_kit.bus import request

DEFAULT_TIMEOUT = 2.0


async def lookup(nc: NATS, ids: Iterable[str] = (), names: Iterable[str] = (), *,
                 timeout: float = DEFAULT_TIMEOUT) -> list[User]:
    """The users found: those matching ``ids`` first, then ``names`` (case-insensitive)."""
    users = UsersRequest(ids=list(ids), names=list(names))
    if not users.ids and not users.names:
        return []
    reply = await request(nc, rpc.AUTH_USERS, users, timeout)
    return reply.users
