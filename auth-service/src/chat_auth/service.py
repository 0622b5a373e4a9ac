"""The auth Component: database, key and the ``auth`` micro service on NATS."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from nats.micro.service import Service
from starlette.routing import BaseRoute

from chat_contract import rpc
from chat_kit.bus import serves, start_service
from chat_kit.db import create_pool, migrate
from chat_kit.logs import event
from chat_kit.passwords import Passwords
from chat_kit.runtime import Runtime
from chat_kit.throttle import LoginThrottle, RegistrationThrottle

from .config import AuthSettings
from .denylist import Denylist
from .handlers import KEEP_EXPIRED, AuthHandlers
from .keys import load_signing_key
from .store import SCHEMA, AuthStore
from .tokens import TokenIssuer

log = logging.getLogger("chat_auth.service")

SERVICE = "auth"
VERSION = "0.1.0"
DB_CHECK_INTERVAL = 5.0
DB_CHECK_TIMEOUT = 2.0
CLEANUP_INTERVAL = 3600.0


class AuthService:
    def __init__(self, settings: AuthSettings, passwords: Passwords | None = None) -> None:
        self.settings = settings
        # The caller (the gateway) gives up after CHAT_REQUEST_TIMEOUT: so does a hash.
        self.passwords = passwords or Passwords.from_settings(
            settings.hashing, deadline=settings.common.request_timeout)
        self.handlers: AuthHandlers | None = None
        self._pool: asyncpg.Pool | None = None
        self._service: Service | None = None
        self._watch: asyncio.Task[None] | None = None
        self._denylist: Denylist | None = None
        self._db_ok = False

    def routes(self) -> list[BaseRoute]:
        return []  # only the kit's /healthz /readyz /metrics

    async def start(self, rt: Runtime) -> None:
        s = self.settings
        key = load_signing_key(s)
        self._pool = await create_pool(s.database_url, stop=rt.stopping)
        await migrate(self._pool, SCHEMA, "chat_auth")
        self._db_ok = True
        rt.checks.append(lambda: self._db_ok)
        await self.passwords.warm_up()
        store = AuthStore(self._pool)
        denylist = self._denylist = Denylist(rt.nc.jetstream(timeout=s.common.request_timeout),
                                             s.access_ttl, s.common.stream_replicas,
                                             s.common.request_timeout)
        await denylist.start()
        await denylist.republish(store.recent_revocations)
        h = self.handlers = AuthHandlers(
            store, self.passwords, key,
            TokenIssuer(key, s.issuer, s.audience, s.access_ttl), s.refresh_ttl, s.reuse_grace,
            LoginThrottle(s.login_max_failures, s.login_max_failures_per_address, s.login_window,
                          per_user=s.login_max_failures_per_user),
            registrations=RegistrationThrottle(s.register_per_address, s.register_address_window,
                                               s.register_rate, s.register_burst),
            denylist=denylist)
        self._watch = asyncio.create_task(self._watch_db(h.store))
        # endpoint() runs requests concurrently (a login waits ~50 ms on argon2);
        # the hashing pool and the DB pool bound the real work.
        self._service = await start_service(rt.nc, SERVICE, VERSION, dict([
            serves(SERVICE, rpc.AUTH_REGISTER, h.register),
            serves(SERVICE, rpc.AUTH_LOGIN, h.login),
            serves(SERVICE, rpc.AUTH_REFRESH, h.refresh),
            serves(SERVICE, rpc.AUTH_LOGOUT, h.logout),
            serves(SERVICE, rpc.AUTH_JWKS, h.jwks),
            serves(SERVICE, rpc.AUTH_USERS, h.users),
            serves(SERVICE, rpc.AUTH_PASSWORD, h.password),
            serves(SERVICE, rpc.AUTH_DISABLE, h.disable),
        ]))
        event(log, "auth service started", kid=key.kid, issuer=s.issuer, audience=s.audience)

    async def stop(self) -> None:
        """Stop taking requests, then close the pool (which waits for queries in flight)."""
        if self._service is not None:
            await self._service.stop()
            self._service = None
        if self._denylist is not None:
            await self._denylist.stop()
            self._denylist = None
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self._db_ok = False
        self.passwords.close()

    async def _watch_db(self, store: AuthStore) -> None:
        """Readiness follows the database; expired refresh tokens are swept hourly."""
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time()
        while True:
            try:
                async with asyncio.timeout(DB_CHECK_TIMEOUT):
                    await store.ping()
                if not self._db_ok:
                    event(log, "database reachable again")
                self._db_ok = True
                if loop.time() >= next_cleanup:
                    next_cleanup = loop.time() + CLEANUP_INTERVAL
                    deleted = await store.delete_expired(KEEP_EXPIRED)
                    if deleted:
                        event(log, "expired refresh tokens deleted", count=deleted)
            except (OSError, TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                if self._db_ok:
                    event(log, "database unreachable", logging.WARNING, error=repr(exc))
                self._db_ok = False
            await asyncio.sleep(DB_CHECK_INTERVAL)
