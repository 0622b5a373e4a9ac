"""One running stack per test module (services and two gateways as
subprocesses on real NATS and PostgreSQL); tests use their own rooms and users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from servers import nats_server

from .stack import Stack


@pytest.fixture(scope="module")
def e2e_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with nats_server(tmp_path_factory.mktemp("nats")) as url:
        yield url


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
