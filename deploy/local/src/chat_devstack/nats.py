"""A real nats-server (JetStream on, file storage) on a loopback port."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .binaries import nats_server_bin
from .ports import LOOPBACK, ProcessExitedError, http_ok, port_open, wait_until

START_TIMEOUT = 30.0


def nats_argv(port: int, store_dir: Path, monitor_port: int | None = None) -> list[str]:
    """Command line for a standalone JetStream server bound to loopback."""
    argv = [
        str(nats_server_bin()),
        "-js",
        "-a", LOOPBACK,
        "-p", str(port),
        "-sd", str(store_dir),
    ]  # fmt: skip
    if monitor_port is not None:
        # -m binds the monitor to the same -a address (loopback).
        argv += ["-m", str(monitor_port)]
    return argv


def nats_ready(port: int, monitor_port: int | None = None) -> bool:
    """One readiness probe: /healthz (JetStream included) if monitored, else the port."""
    if monitor_port is not None:
        return http_ok(f"http://{LOOPBACK}:{monitor_port}/healthz")
    return port_open(LOOPBACK, port)


@dataclass
class NatsServer(procs.ServerProcess):
    """A nats-server child process; ``store_dir`` keeps JetStream data across restarts.

    ``stop`` is SIGTERM (JetStream flushes its store); ``kill`` is a crash that
    JetStream recovers from its files on restart.
    """

    port: int
    store_dir: Path
    monitor_port: int | None = None
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @classmethod
    def start(
        cls,
        port: int,
        store_dir: Path,
        monitor_port: int | None = None,
        *,
        log_path: Path | None = None,
    ) -> NatsServer:
        """Start the server and return once it accepts clients.

        The log defaults to ``<store_dir>/nats-server.log`` (JetStream keeps its
        data under ``<store_dir>/jetstream``, so the two do not collide).
        """
        server = cls(port, Path(store_dir).resolve(), monitor_port, log_path)
        server._launch()
        return server

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def _launch(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path is None:
            self.log_path = self.store_dir / "nats-server.log"
        proc = procs.spawn(
            nats_argv(self.port, self.store_dir, self.monitor_port), log_path=self.log_path
        )
        self._proc = proc
        try:
            wait_until(
                lambda: nats_ready(self.port, self.monitor_port),
                f"nats-server on port {self.port}",
                START_TIMEOUT,
                alive=lambda: proc.poll() is None,
            )
        except (TimeoutError, ProcessExitedError) as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n{procs.log_tail(self.log_path)}") from exc
