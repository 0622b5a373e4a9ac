"""Fixtures shared by every test: real NATS and PostgreSQL (see tests/servers.py).

``nats_url`` is a fresh server per test (it starts in ~50 ms and keeps
JetStream state from leaking between tests); PostgreSQL is one server per
session with a fresh database per test. ``nats_cluster`` is one 3-node
JetStream cluster per session, shared by every cluster test (it takes ~6 s to
form).
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from e2e.stack import permission_violations, register_credentials  # noqa: E402
from servers import nats_server, postgres_server  # noqa: E402

from chat_devstack.nats import NatsCluster  # noqa: E402
from chat_devstack.nats_auth import NatsCredentials  # noqa: E402
from chat_devstack.ports import free_port  # noqa: E402


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with nats_server(tmp_path / "nats") as url:
        yield url


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def nats_cluster_credentials() -> Iterator[NatsCredentials]:
    """The role users of ``nats_cluster`` (chat_devstack.nats_auth)."""
    with tempfile.TemporaryDirectory(prefix="chat-test-nats-cluster-auth-") as tmp:
        yield NatsCredentials.load_or_create(Path(tmp))


@pytest.fixture(scope="session")
def nats_cluster(nats_cluster_credentials: NatsCredentials) -> Iterator[NatsCluster]:
    """One 3-node JetStream cluster (n1..n3) on free loopback ports for the run.

    Shared, so the stream names are too: a module that needs JetStream to
    itself deletes the streams first (rooms and users are per test anyway). A
    test that kills a node restarts it before it ends, caught up. Always the
    local binaries (a cluster test kills and restarts nodes).

    Locked down like production: the role users, no anonymous access; a
    ``Stack`` on it logs each process in as its role (tests/e2e/stack.py),
    and the run fails if any node refused a role a publish or subscribe.
    """
    # A private dir, as for PostgreSQL: a concurrent pytest run prunes old basetemps.
    with tempfile.TemporaryDirectory(prefix="chat-test-nats-cluster-") as tmp:
        ports = _distinct_free_ports(9)
        cluster = NatsCluster.start(Path(tmp), ports[0:3], ports[3:6], ports[6:9],
                                    extra_config=nats_cluster_credentials.authorization())
        register_credentials(cluster.url, nats_cluster_credentials)
        with cluster:
            yield cluster
        refused = [line for node in cluster.nodes for line in permission_violations(node.log_path)]
        assert not refused, "NATS permission violations:\n" + "\n".join(refused[:20])


@pytest.fixture(scope="session")
def nats_cluster_env(nats_cluster_credentials: NatsCredentials) -> dict[str, str]:
    """The admin role's login as environment, for tools such as ``chat-admin``
    (a ``Stack``'s processes replace it with their own role's)."""
    return nats_cluster_credentials.role_env("admin")


@pytest.fixture(scope="session")
def nats_cluster_admin(nats_cluster_credentials: NatsCredentials) -> dict[str, Any]:
    """``nats.connect`` keyword options of an admin connection to ``nats_cluster``."""
    return nats_cluster_credentials.connect_kwargs("admin")


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
