"""PostgreSQL for services: an asyncpg pool and plain-SQL migrations.

Each service owns one schema and ships ``migrations/NNNN_name.sql`` inside its
package. :func:`migrate` applies the missing ones in order, each in its own
transaction, recorded in ``<schema>.schema_migrations``. An advisory lock
makes concurrent starts of several replicas safe.

``CHAT_DB_MIGRATE`` (default true) decides who applies them. True: every
process migrates at start (``make run``, compose). False: a process only
waits at start until its schema has every migration it ships, applied by
someone else: the Kubernetes migration Job, ``python -m chat_kit.migrate
SCHEMA PACKAGE`` (deploy/README.md "The migration Job").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

from .env import env_bool
from .logs import event

log = logging.getLogger("chat_kit.db")

# The database is away (restart, network): worth a retry (``unavailable``),
# unlike a bug or bad data.
DB_UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError,
                  asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10,
                      stop: asyncio.Event | None = None,
                      server_settings: dict[str, str] | None = None) -> asyncpg.Pool:
    """Open a pool, retrying while PostgreSQL is still starting.

    ``server_settings`` are session settings of every connection (e.g.
    ``statement_timeout``: a pool per class of work, each with its own bound).
    """
    delay = 0.1
    while True:
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                             server_settings=server_settings)
            assert pool is not None
            return pool
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.InvalidCatalogNameError) as exc:
            if stop is not None and stop.is_set():
                raise
            event(log, "postgres connect failed", logging.WARNING, error=repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)


def migrate_at_start() -> bool:
    """``CHAT_DB_MIGRATE``: whether a process applies its migrations itself."""
    return env_bool("CHAT_DB_MIGRATE", True)


def _migration_files(package: str) -> list[Traversable]:
    return sorted(
        (f for f in resources.files(package).joinpath("migrations").iterdir()
         if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )


async def pending_migrations(pool: asyncpg.Pool, schema: str, package: str) -> list[str]:
    """The names of ``package``'s migrations that ``schema`` has not recorded."""
    async with pool.acquire() as conn:
        table = await conn.fetchval("SELECT to_regclass($1)::text",
                                    f'"{schema}".schema_migrations')
        done = set() if table is None else {r["version"] for r in await conn.fetch(
            f'SELECT version FROM "{schema}".schema_migrations')}
    return [f.name for f in _migration_files(package) if f.name not in done]


async def migrate(pool: asyncpg.Pool, schema: str, package: str, *,
                  apply: bool | None = None, poll: float = 2.0) -> list[str]:
    """Apply ``package/migrations/*.sql`` not yet recorded; return the applied names.

    ``apply`` None reads ``CHAT_DB_MIGRATE``. When false, apply nothing: wait
    (checking every ``poll`` seconds) until the schema records every
    migration of ``package`` (newer ones the code does not know are fine),
    then return ``[]``.
    """
    if apply is None:
        apply = migrate_at_start()
    if not apply:
        await _wait_for_migrations(pool, schema, package, poll)
        return []
    files = _migration_files(package)
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch(
                f'SELECT version FROM "{schema}".schema_migrations')}
            for f in files:
                if f.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                    await conn.execute(f.read_text())
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations(version) VALUES ($1)', f.name)
                applied.append(f.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    if applied:
        event(log, "migrations applied", schema=schema, versions=applied)
    return applied


async def _wait_for_migrations(pool: asyncpg.Pool, schema: str, package: str,
                               poll: float) -> None:
    told: list[str] | None = None
    while missing := await pending_migrations(pool, schema, package):
        if missing != told:
            event(log, "waiting for migrations (CHAT_DB_MIGRATE=false: the migration job "
                  "applies them)", logging.WARNING, schema=schema, pending=missing)
            told = missing
        await asyncio.sleep(poll)
    if told is not None:
        event(log, "migrations found", schema=schema)
