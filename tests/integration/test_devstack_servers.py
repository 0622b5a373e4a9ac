"""Real nats-server, PostgreSQL and Caddy started by chat_devstack: connect, persist, crash."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import httpx
import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from chat_devstack import Caddy, NatsServer, PostgresServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private dir under /tmp, not pytest's tmp_path.

    As root, PostgreSQL runs as ``chatpg``, which must traverse every parent
    dir; pytest resets its own base dir to 0700 whenever a pytest session
    starts, which would race with a concurrent test run.
    """
    path = Path(tempfile.mkdtemp(prefix="chat-devstack-test-"))
    try:
        yield path
    finally:
        leftovers = _processes_using(path)
        shutil.rmtree(path, ignore_errors=True)
        assert not leftovers, f"server processes left running: {leftovers}"


def _processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(path) in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


# --- NATS ---------------------------------------------------------------------------------


async def test_nats_jetstream_survives_kill(scratch: Path) -> None:
    server = NatsServer.start(free_port(), scratch / "nats", monitor_port=free_port())
    try:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="ROOMS", subjects=["chat.room.*"], storage=StorageType.FILE)
        )
        ack = await js.publish("chat.room.r1", b"hello")
        assert ack.seq == 1
        await nc.close()

        server.kill()  # SIGKILL: a crash, no graceful flush
        assert not server.running
        server.restart()  # same port, same store dir

        nc = await nats.connect(server.url)
        js = nc.jetstream()
        info = await js.stream_info("ROOMS")
        assert info.state.messages == 1
        msg = await js.get_msg("ROOMS", 1)
        assert msg.data == b"hello"
        await nc.close()
    finally:
        server.stop()
    assert not server.running


# --- PostgreSQL ---------------------------------------------------------------------------


async def _fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_postgres_persists_across_restart(scratch: Path) -> None:
    port = free_port()
    data_dir = scratch / "pg"
    server = PostgresServer.start(port, data_dir)
    try:
        assert server.url == f"postgresql://postgres@127.0.0.1:{port}/chat"
        assert await _fetchval(server.url, "SELECT 1") == 1
        await _execute(server.url, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)")
        if os.geteuid() == 0:  # PostgreSQL refuses root: the data dir belongs to chatpg
            assert data_dir.stat().st_uid != 0
        server.stop()
        assert not server.running

        server = PostgresServer.start(port, data_dir)  # reuses the cluster, no initdb
        assert await _fetchval(server.url, "SELECT id FROM kept") == 42
    finally:
        server.stop()


async def test_postgres_recovers_after_kill_with_stale_pid_file(scratch: Path) -> None:
    server = PostgresServer.start(free_port(), scratch / "pg")
    try:
        await _execute(server.url, "CREATE TABLE t (v text); INSERT INTO t VALUES ('committed')")
        server.kill()
        pid_file = server.data_dir / "postmaster.pid"
        assert pid_file.exists()  # left behind by the crash
        # The recorded pid now belongs to an unrelated live process (pid reuse).
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join(["1", *lines[1:]]) + "\n")

        server.restart()
        assert await _fetchval(server.url, "SELECT v FROM t") == "committed"
    finally:
        server.stop()


def test_postgres_refuses_a_second_server_on_the_same_dir(scratch: Path) -> None:
    server = PostgresServer.start(free_port(), scratch / "pg")
    try:
        with pytest.raises(RuntimeError, match="already runs"):
            PostgresServer.start(free_port(), scratch / "pg")
        assert server.running
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data dir to chatpg")
def test_postgres_as_root_under_a_private_parent(scratch: Path) -> None:
    private = scratch / "private"
    private.mkdir(mode=0o700)
    server = PostgresServer.start(free_port(), private / "pg")
    try:
        assert private.stat().st_mode & 0o001  # o+x added so chatpg can reach its dir
        assert (private / "pg").stat().st_uid != 0
    finally:
        server.stop()


# --- Caddy --------------------------------------------------------------------------------


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = str(self.server.server_port).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def test_caddy_round_robin(scratch: Path) -> None:
    upstreams = [ThreadingHTTPServer(("127.0.0.1", 0), _Upstream) for _ in range(2)]
    threads = [threading.Thread(target=u.serve_forever, daemon=True) for u in upstreams]
    for thread in threads:
        thread.start()
    ports = [u.server_port for u in upstreams]
    lb = Caddy.start(free_port(), ports, scratch / "caddy")
    try:
        assert lb.url == f"http://127.0.0.1:{lb.lb_port}"
        answers = {httpx.get(f"{lb.url}/x", trust_env=False).text for _ in range(4)}
        assert answers == {str(p) for p in ports}
    finally:
        lb.stop()
        for upstream in upstreams:
            upstream.shutdown()
            upstream.server_close()
    assert not lb.running
