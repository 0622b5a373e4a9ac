"""Fixtures shared by every test: real NATS and PostgreSQL (see tests/servers.py).

``nats_url`` is a fresh server per test (it starts in ~50 ms and keeps
JetStream state from leaking between tests); PostgreSQL is one server per
session with a fresh database per test.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import nats_server, postgres_server  # noqa: E402


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with nats_server(tmp_path / "nats") as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    # A private dir, not tmp_path_factory: a concurrent pytest run prunes old
    # numbered basetemps and would delete a live data dir from under us.
    with tempfile.TemporaryDirectory(prefix="chat-test-pg-") as tmp:
        with postgres_server(Path(tmp) / "data") as url:
            yield url


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def db_url(pg_url: str) -> AsyncIterator[str]:
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield _with_database(pg_url, name)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
