"""Spawning and stopping server processes.

Every process is started in its own session (process group == its pid) so that
a terminal Ctrl-C reaches only the launcher, which then stops children in a
chosen order, and so that a hard kill can take a server's own children (e.g.
PostgreSQL backends) down with it via ``killpg``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, ClassVar, Self

STOP_TIMEOUT = 10.0

# Standalone servers (tests, fixtures) still running at interpreter exit are
# stopped then, so an exception or Ctrl-C in a test run leaves nothing behind.
_at_exit: dict[int, tuple[subprocess.Popen[bytes], int]] = {}
_at_exit_lock = threading.Lock()


def run_as(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """(uid, gid, extra_groups) for Popen to drop root privileges to ``user``."""
    if user is None:
        return None, None, None
    entry = pwd.getpwnam(user)
    # extra_groups=[]: do not leak root's supplementary groups to the child.
    return entry.pw_uid, entry.pw_gid, []


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path | None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
    cleanup_at_exit: bool = True,
    pipe_output: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session.

    Output goes to ``log_path`` (appended), or to a pipe when ``pipe_output``
    (the supervisor streams it), or is discarded.
    """
    stdout: int | IO[bytes]
    log_file = None
    if pipe_output:
        stdout = subprocess.PIPE
    elif log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        stdout = log_file
    else:
        stdout = subprocess.DEVNULL
    uid, gid, groups = run_as(user)
    try:
        proc = subprocess.Popen(
            [os.fspath(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    finally:
        if log_file is not None:
            log_file.close()  # the child holds its own copy of the fd
    if cleanup_at_exit:
        with _at_exit_lock:
            _at_exit[proc.pid] = (proc, stop_signal)
    return proc


def _forget(pid: int) -> None:
    with _at_exit_lock:
        _at_exit.pop(pid, None)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (tolerates it being gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_child(
    proc: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> int:
    """Graceful stop of a child we spawned: signal, wait, then SIGKILL its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
    # Sweep leftovers (grandchildren) that kept the group alive after the leader exited.
    kill_group(proc.pid)
    _forget(proc.pid)
    return proc.returncode


def kill_child(proc: subprocess.Popen[bytes]) -> int:
    """Hard kill (SIGKILL to the whole group): simulates a crash."""
    kill_group(proc.pid)
    proc.wait()
    _forget(proc.pid)
    return proc.returncode


def disown(proc: subprocess.Popen[bytes]) -> None:
    """Let a detached child outlive us (``down`` stops it later by its recorded pid).

    Marking the Popen finished keeps its finaliser from warning "still
    running" and from reaping it; ``pid_alive`` reaps it if it exits while we
    still run.
    """
    _forget(proc.pid)
    proc.returncode = 0


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (Linux), to tell a recycled pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); split after the ")" that ends the command name.
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True when ``pid`` runs and (if known) is the same process we started."""
    # Reap it if it happens to be our own exited child, so it is not a zombie forever.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = ""
    if state == "Z":
        return False
    return started is None or start_time(pid) in (None, started)


def stop_pid(
    pid: int,
    stop_signal: int = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT,
    started: int | None = None,
) -> bool:
    """Stop a process that may not be our child (detached stack). True if it was running."""
    if not pid_alive(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    kill_group(pid)
    deadline = time.monotonic() + 5.0
    while pid_alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def log_tail(path: Path | None, lines: int = 40) -> str:
    """Last lines of a log file, for error messages."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@atexit.register
def _stop_leftovers() -> None:
    with _at_exit_lock:
        leftovers = list(_at_exit.values())
    for proc, stop_signal in reversed(leftovers):
        stop_child(proc, stop_signal, timeout=5.0)


class ServerProcess:
    """The lifecycle shared by the servers the launcher and the tests start.

    Subclasses (dataclasses with a ``_proc`` field) implement ``_launch``: spawn,
    then wait until the server answers.
    """

    stop_signal: ClassVar[int] = signal.SIGTERM
    _proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop with the server's own ``stop_signal``."""
        if self._proc is not None:
            stop_child(self._proc, self.stop_signal, timeout)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL to the whole group, as in a crash."""
        if self._proc is not None:
            kill_child(self._proc)
            self._proc = None

    def restart(self) -> None:
        """Stop (if running) and start again with the same port and data."""
        self.stop()
        self._launch()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _launch(self) -> None:
        raise NotImplementedError
