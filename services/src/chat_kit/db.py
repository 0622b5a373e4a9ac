"""PostgreSQL for services: an asyncpg pool and plain-SQL migrations.

Each service owns one schema and ships ``migrations/NNNN_name.sql`` inside its
package. :func:`migrate` applies the missing ones in order, each in its own
transaction, recorded in ``<schema>.schema_migrations``. An advisory lock
makes concurrent starts of several replicas safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from importlib import resources

import asyncpg

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


async def migrate(pool: asyncpg.Pool, schema: str, package: str) -> list[str]:
    """Apply ``package/migrations/*.sql`` not yet recorded; return the applied names."""
    files = sorted(
        (f for f in resources.files(package).joinpath("migrations").iterdir()
         if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
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
