"""One running stack per test module (services and two gateways as
subprocesses on real NATS and PostgreSQL); tests use their own rooms and users.

The module's NATS server has the role users (tests/e2e/stack.py
``authorized_nats``): every process logs in as its role, and the module
fails if the server refused any publish or subscribe meanwhile — a role
missing a permission it needs shows up here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from servers import nats_server

from chat_devstack.nats import NatsServer

from .stack import Stack, authorized_nats, permission_violations


@pytest.fixture(scope="module")
def e2e_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("CHAT_TEST_NATS_URL"):  # a server we cannot configure: no users
        with nats_server(tmp_path_factory.mktemp("nats")) as url:
            yield url
        return
    with authorized_nats(tmp_path_factory.mktemp("nats")) as server:
        yield server.url
    assert_no_violations(server)


def assert_no_violations(server: NatsServer) -> None:
    """Fail if NATS refused any role a publish or subscribe (its log says which)."""
    refused = permission_violations(server.log_path)
    assert not refused, "NATS permission violations:\n" + "\n".join(refused[:20])


@pytest.fixture(scope="module")
async def e2e_db(pg_url: str) -> AsyncIterator[str]:
    name = "e2e_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(pg_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield pg_url.rpartition("/")[0] + "/" + name


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs: Path = tmp_path_factory.mktemp("stack-logs")
    s = Stack(e2e_nats, e2e_db, logs)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"
