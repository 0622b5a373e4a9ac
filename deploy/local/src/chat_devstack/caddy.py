"""Caddy as the local load balancer in front of the gateway nodes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .binaries import caddy_bin
from .ports import LOOPBACK, ProcessExitedError, port_open, wait_until

START_TIMEOUT = 30.0
CADDYFILE = "Caddyfile"


def render_caddyfile(
    lb_port: int,
    upstream_ports: Sequence[int],
    *,
    admin_port: int | None = None,
    data_dir: Path | None = None,
    health_uri: str = "/readyz",
) -> str:
    """Caddyfile for a round-robin WebSocket-capable proxy over the gateways.

    - Active health checks on ``/readyz`` every second: a draining gateway
      fails readiness and stops getting new clients within ~1 s.
    - Passive checks (connection failures) take a crashed node out at once;
      ``lb_try_duration`` retries a request on another node meanwhile.
    - ``flush_interval -1`` streams responses unbuffered; WebSocket upgrades
      are proxied by ``reverse_proxy`` without further config.
    """
    if not upstream_ports:
        raise ValueError("at least one upstream port is required")
    upstreams = " ".join(f"{LOOPBACK}:{port}" for port in upstream_ports)
    admin = f"admin {LOOPBACK}:{admin_port}" if admin_port is not None else "admin off"
    storage = f"\n\tstorage file_system {data_dir}" if data_dir is not None else ""
    return f"""\
{{
	{admin}
	auto_https off
	persist_config off
	skip_install_trust{storage}
	# Bounded graceful stop: WebSockets would otherwise hold shutdown open.
	grace_period 5s
	# Plain HTTP/1.1 (WebSocket upgrades need nothing else); saying so also
	# silences the "HTTP/2 and HTTP/3 need TLS" warnings.
	servers {{
		protocols h1
	}}
	# WARN: keeps the per-second "health check failed" INFO lines of a dead
	# gateway out of the terminal.
	log default {{
		output stderr
		format console
		level WARN
	}}
}}

:{lb_port} {{
	bind {LOOPBACK}
	# /metrics is for Prometheus, which scrapes the gateways directly: never
	# served through the public port. (The probes stay reachable here: the
	# local tools wait on the balancer's /readyz; compose and the Ingress
	# keep them internal too.)
	@metrics path /metrics
	respond @metrics 404
	reverse_proxy {upstreams} {{
		lb_policy round_robin
		lb_try_duration 5s
		lb_try_interval 250ms

		health_uri {health_uri}
		health_interval 1s
		health_timeout 1s
		health_passes 1
		health_fails 1

		fail_duration 10s
		max_fails 1

		flush_interval -1
	}}
}}
"""


def write_caddyfile(
    config_dir: Path, lb_port: int, upstream_ports: Sequence[int], *, admin_port: int | None = None
) -> Path:
    """Render into ``config_dir/Caddyfile`` (Caddy's own state goes to ``config_dir/data``)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / CADDYFILE
    path.write_text(
        render_caddyfile(
            lb_port, upstream_ports, admin_port=admin_port, data_dir=config_dir / "data"
        )
    )
    return path


def caddy_env(config_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment that keeps Caddy's files under ``config_dir`` instead of ``$HOME``."""
    env = dict(os.environ if base is None else base)
    env["XDG_DATA_HOME"] = str(config_dir / "data")
    env["XDG_CONFIG_HOME"] = str(config_dir / "config")
    return env


def caddy_argv(caddyfile: Path) -> list[str]:
    return [str(caddy_bin()), "run", "--config", str(caddyfile), "--adapter", "caddyfile"]


def validate_caddyfile(caddyfile: Path) -> subprocess.CompletedProcess[str]:
    """``caddy validate`` (raises CalledProcessError with Caddy's message on failure)."""
    return subprocess.run(
        [str(caddy_bin()), "validate", "--config", str(caddyfile), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=True,
        env=caddy_env(caddyfile.parent),
    )


@dataclass
class Caddy(procs.ServerProcess):
    """A Caddy child process load-balancing ``upstream_ports`` on ``lb_port``."""

    lb_port: int
    upstream_ports: tuple[int, ...]
    config_dir: Path
    admin_port: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @classmethod
    def start(
        cls,
        lb_port: int,
        upstream_ports: Sequence[int],
        config_dir: Path,
        *,
        admin_port: int | None = None,
    ) -> Caddy:
        """Write the Caddyfile, start Caddy, return once ``lb_port`` accepts connections."""
        caddy = cls(lb_port, tuple(upstream_ports), Path(config_dir).resolve(), admin_port)
        caddy._launch()
        return caddy

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.lb_port}"

    @property
    def caddyfile(self) -> Path:
        return self.config_dir / CADDYFILE

    @property
    def log_path(self) -> Path:
        return self.config_dir / "caddy.log"

    def _launch(self) -> None:
        path = write_caddyfile(
            self.config_dir, self.lb_port, self.upstream_ports, admin_port=self.admin_port
        )
        proc = procs.spawn(caddy_argv(path), log_path=self.log_path, env=caddy_env(self.config_dir))
        self._proc = proc
        try:
            wait_until(
                lambda: port_open(LOOPBACK, self.lb_port),
                f"caddy on port {self.lb_port}",
                START_TIMEOUT,
                alive=lambda: proc.poll() is None,
            )
        except (TimeoutError, ProcessExitedError) as exc:
            self.stop(timeout=2)
            raise RuntimeError(f"{exc}\n{procs.log_tail(self.log_path)}") from exc
