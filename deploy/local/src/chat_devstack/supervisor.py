"""Run named child processes in order, each ready before the next, and stop them in reverse.

Two modes share one on-disk record under the run dir, so ``down``/``status``
and duplicate detection work whichever mode started the stack:

    <run_dir>/pids/<name>.pid   JSON: pid, kernel start time, stop signal
    <run_dir>/pids/order        names in start order (stop goes in reverse)
    <run_dir>/logs/<name>.log   the child's stdout+stderr (previous run: .log.1)

- foreground (``run_foreground``): children's output is streamed to our
  stdout prefixed with a coloured name, and appended to the log files;
  Ctrl-C/SIGTERM stops everything (a second Ctrl-C kills at once).
- detached (``start_detached``): children write their log files themselves
  and outlive us; ``stop_recorded`` stops them later.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from . import procs
from .ports import LOOPBACK, ProcessExitedError, http_ok, port_open, wait_until

DEFAULT_READY_TIMEOUT = 60.0
_COLORS = ("36", "33", "32", "35", "34", "91", "92", "93", "94", "95", "96")

Say = Callable[[str], None]


@dataclass(frozen=True)
class ProcSpec:
    """One child. Readiness = every given probe passes (none given: started is ready)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None  # full environment; None inherits ours
    ready_url: str | None = None  # GET must answer 2xx
    ready_port: int | None = None  # 127.0.0.1:port must accept TCP
    ready_check: Callable[[], bool] | None = None  # any other one-shot probe
    on_ready: Callable[[], None] | None = None  # e.g. create the database
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    stop_signal: int = signal.SIGTERM  # PostgreSQL wants SIGINT (fast shutdown)
    user: str | None = None  # run as this OS user (we must be root)
    cwd: Path | None = None

    def is_ready(self) -> bool:
        if self.ready_port is not None and not port_open(LOOPBACK, self.ready_port):
            return False
        if self.ready_url is not None and not http_ok(self.ready_url):
            return False
        return self.ready_check is None or self.ready_check()


class StartupError(RuntimeError):
    """A child failed to become ready; everything started before it was stopped."""


# --- on-disk records --------------------------------------------------------------------


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    started: int | None  # kernel start time: guards against a recycled pid
    stop_signal: int

    def alive(self) -> bool:
        return procs.pid_alive(self.pid, self.started)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def order_file(self) -> Path:
        return self.pids / "order"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def fresh_log(self, name: str) -> Path:
        """The log path for a new run; the previous run's log is kept as ``.log.1``."""
        path = self.log_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.replace(path.with_name(path.name + ".1"))
        return path

    def record(self, name: str, pid: int, stop_signal: int) -> None:
        self.pids.mkdir(parents=True, exist_ok=True)
        rec = {"pid": pid, "started": procs.start_time(pid), "stop_signal": stop_signal}
        self.pid_file(name).write_text(json.dumps(rec) + "\n")
        with self.order_file.open("a") as order:
            order.write(name + "\n")

    def forget(self, name: str) -> None:
        self.pid_file(name).unlink(missing_ok=True)
        names = [n for n in self._order() if n != name]
        if names:
            self.order_file.write_text("".join(n + "\n" for n in names))
        else:
            self.order_file.unlink(missing_ok=True)

    def records(self) -> list[PidRecord]:
        """Recorded children in start order (unreadable pid files are skipped)."""
        names = self._order()
        if self.pids.is_dir():  # a pid file missing from the order file: stop it first
            names += sorted(p.stem for p in self.pids.glob("*.pid") if p.stem not in names)
        out = []
        for name in names:
            try:
                raw = json.loads(self.pid_file(name).read_text())
                out.append(
                    PidRecord(
                        name,
                        int(raw["pid"]),
                        raw.get("started"),
                        int(raw.get("stop_signal", signal.SIGTERM)),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def _order(self) -> list[str]:
        try:
            lines = self.order_file.read_text().split()
        except OSError:
            return []
        return list(dict.fromkeys(lines))  # de-duplicated, order kept

    def lock(self) -> RunLock:
        return RunLock(self.root / ".lock")


class RunLock:
    """Exclusive, non-blocking lock so two launchers never start or stop one stack at once.

    Released explicitly (a foreground run lets go once everything is ready) or
    by the OS when the process dies.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(
                f"another chat-stack is starting or stopping the stack in {self.path.parent}"
            ) from None
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def status(run_dir: Path) -> list[tuple[PidRecord, bool]]:
    """Each recorded child with whether it is still running."""
    return [(rec, rec.alive()) for rec in RunDir(run_dir).records()]


def stop_recorded(run_dir: Path, timeout: float = procs.STOP_TIMEOUT, say: Say = print) -> int:
    """Stop recorded children in reverse start order; returns how many were running.

    Already-dead pids are tolerated and their records dropped.
    """
    rundir = RunDir(run_dir)
    stopped = 0
    for rec in reversed(rundir.records()):
        if procs.stop_pid(rec.pid, rec.stop_signal, timeout, rec.started):
            say(f"stopped {rec.name} (pid {rec.pid})")
            stopped += 1
        rundir.forget(rec.name)
    return stopped


# --- the supervisor ---------------------------------------------------------------------


@dataclass
class _Child:
    spec: ProcSpec
    proc: subprocess.Popen[bytes]
    pump: threading.Thread | None = None
    reported_exit: bool = False


@dataclass
class Supervisor:
    specs: Sequence[ProcSpec]
    run_dir: Path
    say: Say = print
    color: bool | None = None  # None: only when stdout is a terminal and NO_COLOR is unset
    _children: list[_Child] = field(default_factory=list, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _out_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate process names: {names}")
        self.rundir = RunDir(Path(self.run_dir).resolve())

    # -- detached --

    def start_detached(self) -> None:
        """Start every child with its output in its log file; they outlive this process."""
        try:
            for spec in self.specs:
                log = self.rundir.fresh_log(spec.name)
                proc = procs.spawn(
                    spec.argv,
                    log_path=log,
                    env=spec.env,
                    user=spec.user,
                    cwd=spec.cwd,
                    cleanup_at_exit=False,
                )
                self._adopt(spec, proc)
                self._await_ready(spec, proc, log)
        except BaseException:
            # Startup failed or Ctrl-C: leave nothing half-started behind.
            self._stop_children(timeout=procs.STOP_TIMEOUT)
            raise
        for child in self._children:
            procs.disown(child.proc)
        self._children.clear()

    # -- foreground --

    def run_foreground(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start all, stream their output, block until Ctrl-C/SIGTERM, stop all.

        Returns 0 after a requested stop, 1 if startup failed. A child that dies
        later is reported and the rest keep running (e.g. to watch the load
        balancer move clients off a dead gateway); when all have died we return 1.
        """
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        code = 0
        try:
            try:
                self._start_foreground()
            except (StartupError, InterruptedError) as exc:
                self.say(f"chat-stack: {exc}")
                return 1
            if on_ready is not None:
                on_ready()
            while not self._stop.wait(0.3):
                if self._reap_exited():
                    self.say("chat-stack: every process has exited")
                    code = 1
                    break
            if self._stop.is_set():
                self.say("\nchat-stack: shutting down (Ctrl-C again to kill at once)")
            return code
        finally:
            self._stop_children(timeout=procs.STOP_TIMEOUT)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start_foreground(self) -> None:
        width = max(len(s.name) for s in self.specs)
        for index, spec in enumerate(self.specs):
            if self._stop.is_set():
                raise InterruptedError("interrupted during startup")
            log = self.rundir.fresh_log(spec.name)
            proc = procs.spawn(
                spec.argv,
                log_path=None,
                env=spec.env,
                user=spec.user,
                cwd=spec.cwd,
                pipe_output=True,
            )
            child = self._adopt(spec, proc)
            prefix = self._prefix(spec.name, width, index)
            assert proc.stdout is not None
            child.pump = threading.Thread(
                target=self._pump,
                args=(proc.stdout, prefix, log),
                daemon=True,
                name=f"pump-{spec.name}",
            )
            child.pump.start()
            self._await_ready(spec, proc, log)

    def _prefix(self, name: str, width: int, index: int) -> str:
        use_color = self.color
        if use_color is None:
            use_color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        label = f"{name:<{width}} | "
        if not use_color:
            return label
        return f"\033[{_COLORS[index % len(_COLORS)]}m{label}\033[0m"

    def _pump(self, stream: IO[bytes], prefix: str, log: Path) -> None:
        """Copy one child's output to the log file and, prefixed, to our stdout."""
        with log.open("ab") as sink:
            for raw in iter(stream.readline, b""):
                sink.write(raw)
                sink.flush()
                line = raw.decode(errors="replace").rstrip("\r\n")
                with self._out_lock:
                    sys.stdout.write(prefix + line + "\n")
                    sys.stdout.flush()
        stream.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No printing here: the handler may interrupt a print in the main thread.
        if self._stop.is_set():
            # Second Ctrl-C: no more waiting for graceful shutdown.
            for child in self._children:
                procs.kill_group(child.proc.pid)
        self._stop.set()

    def _reap_exited(self) -> bool:
        """Report children that died on their own; True when none is left."""
        for child in self._children:
            code = child.proc.poll()
            if code is not None and not child.reported_exit:
                child.reported_exit = True
                self.say(f"chat-stack: {child.spec.name} exited with code {code}")
        return all(c.reported_exit for c in self._children)

    # -- shared --

    def _adopt(self, spec: ProcSpec, proc: subprocess.Popen[bytes]) -> _Child:
        child = _Child(spec, proc)
        self._children.append(child)
        self.rundir.record(spec.name, proc.pid, spec.stop_signal)
        return child

    def _await_ready(self, spec: ProcSpec, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.say(f"chat-stack: started {spec.name} (pid {proc.pid}), waiting until ready")
        try:
            wait_until(
                spec.is_ready,
                spec.name,
                spec.ready_timeout,
                alive=lambda: proc.poll() is None,
                cancelled=self._stop.is_set,
            )
            if spec.on_ready is not None:
                spec.on_ready()
        except (TimeoutError, ProcessExitedError) as exc:
            if self._children and self._children[-1].pump is not None:
                self._children[-1].pump.join(timeout=1)  # let its last lines reach the log
            raise StartupError(
                f"{exc}\n--- last lines of {log} ---\n{procs.log_tail(log)}"
            ) from exc
        self.say(f"chat-stack: {spec.name} is ready")

    def _stop_children(self, timeout: float) -> None:
        for child in reversed(self._children):
            if child.proc.poll() is None:
                self.say(f"chat-stack: stopping {child.spec.name}")
            procs.stop_child(child.proc, child.spec.stop_signal, timeout)
            if child.pump is not None:
                child.pump.join(timeout=2)
            self.rundir.forget(child.spec.name)
        self._children.clear()
