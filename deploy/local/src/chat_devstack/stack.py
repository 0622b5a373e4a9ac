"""The whole local stack as an ordered list of supervised processes.

Start order (each ready before the next): nats (or nats-1..N), postgres,
auth, history, presence, notify, gateway-1..N, lb. A cluster's nodes start together:
only the last one waits, until every node's ``/healthz`` (JetStream meta
leader elected) answers. Settings come from the environment:

==========================  =======  ==================================================
variable                    default  meaning
==========================  =======  ==================================================
``CHAT_RUN_DIR``            ``.run`` state, logs and pid files (relative to the cwd)
``CHAT_NATS_NODES``         1        nats-servers: 1, or 3 (or more) as a JetStream cluster
``CHAT_NATS_PORT``          4222     client port of node 1 (node n: port + n - 1)
``CHAT_NATS_MONITOR_PORT``  8222     HTTP monitor (``/healthz``) of node 1, likewise; 0 = off
``CHAT_NATS_CLUSTER_PORT``  6222     route port of node 1, likewise (cluster only)
``CHAT_PG_PORT``            5432     PostgreSQL TCP port (database ``chat``)
``CHAT_LB_PORT``            8080     Caddy load balancer: the URL to open
``CHAT_GATEWAYS``           2        number of gateway nodes
``CHAT_GATEWAY_BASE_PORT``  8081     gateway-n listens on base + n - 1 (8081, 8082, ...)
``CHAT_AUTH_PORT``          8091     auth-service HTTP port
``CHAT_HISTORY_PORT``       8092     history-service HTTP port
``CHAT_PRESENCE_PORT``      8093     presence-service HTTP port
``CHAT_NOTIFY_PORT``        8094     notify-service HTTP port
``CHAT_BIN_DIR``            venv     where the ``chat-*`` console scripts are looked up
==========================  =======  ==================================================

``CHAT_SERVER_API_BASE_PORT`` (8181): gateway-n's internal server API
listener is base + n - 1; 0 = none. Every port binds 127.0.0.1 only.
Children inherit our environment plus
``CHAT_NATS_URL`` (every node), ``CHAT_STREAM_REPLICAS`` (3 on a cluster,
unless set), ``CHAT_DATABASE_URL``, ``CHAT_AUTH_PORT``, ``CHAT_HISTORY_PORT``,
``CHAT_PRESENCE_PORT``, ``CHAT_NOTIFY_PORT`` and ``CHAT_LOG_FORMAT=json``
(unless already set); auth also gets ``CHAT_AUTH_SIGNING_KEY_FILE``;
gateway-n gets ``CHAT_GATEWAY_PORT`` and ``CHAT_GATEWAY_NODE_ID=gw-<n>``,
and the server API's ``CHAT_SERVER_API_PORT`` and ``CHAT_SERVER_API_KEYS_FILE``:
the one given in our environment, else ``<run dir>/server-api/keys`` (0600),
which ``prepare`` makes once with one key ``local`` of every scope (README
"Server API"; ``chat-admin server`` reads it from there too).

notify-service sends webhooks only when ``CHAT_NOTIFY_WEBHOOK_URL`` is set
in our environment (passed through); its HMAC key is then
``CHAT_NOTIFY_WEBHOOK_SECRET`` / ``_FILE`` if given, else a random key
``prepare`` keeps in ``<run dir>/notify/webhook-secret`` (0600) for the
receiver to read. Without the URL it runs and sends nothing.

NATS has no anonymous user: every node's config carries the
``authorization`` block of :mod:`.nats_auth` (one user per role), whose
passwords ``prepare`` keeps under ``<run dir>/nats-auth/`` (0700, files
0600). Each process gets its role's ``CHAT_NATS_USER``,
``CHAT_NATS_PASSWORD_FILE`` and ``CHAT_NATS_ROLE``; ``admin.password`` is
for people and tools (``chat-admin``, the ``nats`` CLI). Cluster routes
stay without credentials: they listen on 127.0.0.1 only, like everything
here (a deployment across hosts adds ``cluster { authorization }`` and TLS).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chat_kit.stream import subject_mapping

from . import caddy, nats, nats_auth, postgres
from .binaries import venv_bin_dir
from .ports import LOOPBACK, port_in_use
from .supervisor import ProcSpec

SERVICES = (  # (process name, console script, port attribute)
    ("auth", "chat-auth", "auth_port"),
    ("history", "chat-history", "history_port"),
    ("presence", "chat-presence", "presence_port"),
    ("notify", "chat-notify", "notify_port"),
)
GATEWAY_SCRIPT = "chat-gateway"
STATE_FILE = "stack.json"


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path = Path(".run")
    nats_port: int = 4222
    nats_monitor_port: int | None = 8222
    nats_nodes: int = 1
    nats_cluster_port: int = 6222
    # CHAT_STREAM_PARTITIONS, read by the services too: > 1 needs the subject
    # mapping and the partition streams' permissions in every NATS node.
    stream_partitions: int = 1
    pg_port: int = 5432
    lb_port: int = 8080
    gateways: int = 2
    gateway_base_port: int = 8081
    auth_port: int = 8091
    history_port: int = 8092
    presence_port: int = 8093
    notify_port: int = 8094
    server_api_base_port: int = 8181
    bin_dir: Path = field(default_factory=venv_bin_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if environ is None else environ
        d = cls()
        monitor = _int_env(env, "CHAT_NATS_MONITOR_PORT", 8222)
        config = cls(
            run_dir=Path(env.get("CHAT_RUN_DIR") or d.run_dir).resolve(),
            nats_port=_int_env(env, "CHAT_NATS_PORT", d.nats_port),
            nats_monitor_port=monitor or None,
            nats_nodes=_int_env(env, "CHAT_NATS_NODES", d.nats_nodes),
            stream_partitions=_int_env(env, "CHAT_STREAM_PARTITIONS", d.stream_partitions),
            nats_cluster_port=_int_env(env, "CHAT_NATS_CLUSTER_PORT", d.nats_cluster_port),
            pg_port=_int_env(env, "CHAT_PG_PORT", d.pg_port),
            lb_port=_int_env(env, "CHAT_LB_PORT", d.lb_port),
            gateways=_int_env(env, "CHAT_GATEWAYS", d.gateways),
            gateway_base_port=_int_env(env, "CHAT_GATEWAY_BASE_PORT", d.gateway_base_port),
            auth_port=_int_env(env, "CHAT_AUTH_PORT", d.auth_port),
            history_port=_int_env(env, "CHAT_HISTORY_PORT", d.history_port),
            presence_port=_int_env(env, "CHAT_PRESENCE_PORT", d.presence_port),
            notify_port=_int_env(env, "CHAT_NOTIFY_PORT", d.notify_port),
            server_api_base_port=_int_env(env, "CHAT_SERVER_API_BASE_PORT",
                                          d.server_api_base_port),
            bin_dir=Path(env.get("CHAT_BIN_DIR") or d.bin_dir),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.gateways < 1:
            raise ValueError("CHAT_GATEWAYS must be at least 1")
        if self.stream_partitions < 1:
            raise ValueError("CHAT_STREAM_PARTITIONS must be at least 1")
        if self.nats_nodes < 1 or self.nats_nodes == 2:
            # Two nodes cannot elect a JetStream leader once one is down: no gain over one.
            raise ValueError("CHAT_NATS_NODES must be 1, or 3 or more")
        if self.clustered and self.nats_monitor_port is None:
            raise ValueError("CHAT_NATS_MONITOR_PORT cannot be 0 with a cluster (readiness)")
        ports = self.ports()
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ValueError(f"{name}={port} is not a valid port")
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} both use port {port}")
            seen[port] = name

    def gateway_ports(self) -> list[int]:
        return [self.gateway_base_port + i for i in range(self.gateways)]

    def server_api_ports(self) -> list[int]:
        """Each gateway's internal server API port (none when the base is 0)."""
        if not self.server_api_base_port:
            return []
        return [self.server_api_base_port + i for i in range(self.gateways)]

    @property
    def server_api_keys_file(self) -> Path:
        """The server API's keys (``<key-id>:<secret>:<scopes>`` lines), made once."""
        return self.run_dir / "server-api" / "keys"

    @property
    def clustered(self) -> bool:
        return self.nats_nodes > 1

    def nats_node_names(self) -> list[str]:
        """Process (and server) names: ``nats`` alone, ``nats-1..N`` in a cluster."""
        if not self.clustered:
            return ["nats"]
        return [f"nats-{n}" for n in range(1, self.nats_nodes + 1)]

    def nats_ports(self) -> list[int]:
        return [self.nats_port + i for i in range(self.nats_nodes)]

    def nats_monitor_ports(self) -> list[int | None]:
        base = self.nats_monitor_port
        return [None if base is None else base + i for i in range(self.nats_nodes)]

    def nats_cluster_ports(self) -> list[int]:
        if not self.clustered:
            return []
        return [self.nats_cluster_port + i for i in range(self.nats_nodes)]

    def ports(self) -> dict[str, int]:
        """Every port the stack binds, keyed by what sets it (for error messages)."""
        ports: dict[str, int] = {}
        for name, port, monitor in zip(self.nats_node_names(), self.nats_ports(),
                                       self.nats_monitor_ports(), strict=True):
            suffix = f" ({name})" if self.clustered else ""
            ports[f"CHAT_NATS_PORT{suffix}"] = port
            if monitor is not None:
                ports[f"CHAT_NATS_MONITOR_PORT{suffix}"] = monitor
        for name, port in zip(self.nats_node_names(), self.nats_cluster_ports(), strict=False):
            ports[f"CHAT_NATS_CLUSTER_PORT ({name})"] = port
        ports.update({
            "CHAT_PG_PORT": self.pg_port,
            "CHAT_LB_PORT": self.lb_port,
            "CHAT_AUTH_PORT": self.auth_port,
            "CHAT_HISTORY_PORT": self.history_port,
            "CHAT_PRESENCE_PORT": self.presence_port,
            "CHAT_NOTIFY_PORT": self.notify_port,
        })
        for n, port in enumerate(self.gateway_ports(), start=1):
            ports[f"CHAT_GATEWAY_BASE_PORT (gateway-{n})"] = port
        for n, port in enumerate(self.server_api_ports(), start=1):
            ports[f"CHAT_SERVER_API_BASE_PORT (gateway-{n})"] = port
        return ports

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.lb_port}"

    @property
    def nats_url(self) -> str:
        """Every node: clients pick one and fail over to the others."""
        return ",".join(f"nats://{LOOPBACK}:{port}" for port in self.nats_ports())

    def nats_servers(self, authorization: str = "") -> list[nats.NatsServer]:
        """The nodes as server objects (not started): config text and store dirs.

        ``authorization`` is the users block every node gets (:mod:`.nats_auth`).
        """
        mappings = subject_mapping(self.stream_partitions)
        if not self.clustered:
            return [nats.NatsServer(self.nats_port, self.run_dir / "nats", self.nats_monitor_port,
                                    extra_config=authorization, mappings=mappings)]
        routes = self.nats_cluster_ports()
        return [
            nats.NatsServer(port, self.run_dir / "nats-cluster" / f"n{n}", monitor,
                            cluster=nats.ClusterSpec(f"n{n}", routes[n - 1], routes),
                            extra_config=authorization, mappings=mappings)
            for n, (port, monitor) in enumerate(
                zip(self.nats_ports(), self.nats_monitor_ports(), strict=True), start=1)
        ]

    @property
    def database_url(self) -> str:
        return postgres.dsn(self.pg_port)

    @property
    def signing_key_file(self) -> Path:
        return self.run_dir / "auth" / "signing-key.pem"

    @property
    def webhook_secret_file(self) -> Path:
        """notify-service's HMAC key, made when a webhook URL is set without one."""
        return self.run_dir / "notify" / "webhook-secret"

    @property
    def nats_auth_dir(self) -> Path:
        """Each NATS role's password file (``<role>.password``)."""
        return self.run_dir / nats_auth.AUTH_DIR


def busy_ports(config: StackConfig) -> list[str]:
    """``"NAME=port"`` for each port someone else already listens on."""
    return [f"{name}={port}" for name, port in config.ports().items() if port_in_use(port)]


def service_env(config: StackConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment shared by auth, history, presence and the gateways."""
    env = dict(os.environ if base is None else base)
    if config.clustered:
        env.setdefault("CHAT_STREAM_REPLICAS", str(min(3, config.nats_nodes)))
    env.update(
        CHAT_NATS_URL=config.nats_url,
        CHAT_DATABASE_URL=config.database_url,
        CHAT_AUTH_PORT=str(config.auth_port),
        CHAT_HISTORY_PORT=str(config.history_port),
        CHAT_PRESENCE_PORT=str(config.presence_port),
        CHAT_NOTIFY_PORT=str(config.notify_port),
        # Unbuffered, so log lines reach the supervisor (and the terminal) as they happen.
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("CHAT_LOG_FORMAT", "json")
    return env


def role_env(config: StackConfig, env: Mapping[str, str], role: str) -> dict[str, str]:
    """``env`` logged in to NATS as ``role``: our credentials replace any inherited ones."""
    out = {k: v for k, v in env.items() if k not in nats_auth.CREDENTIAL_VARIABLES}
    out.update(nats_auth.role_env(config.nats_auth_dir, role))
    return out


def _script(config: StackConfig, name: str) -> str:
    path = config.bin_dir / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is not installed in {config.bin_dir}; install its package (make venv)"
        )
    return str(path)


def build_specs(config: StackConfig, base_env: Mapping[str, str] | None = None) -> list[ProcSpec]:
    """The processes of the stack, in start order. No side effects."""
    run = config.run_dir
    env = service_env(config, base_env)
    pg_layout = postgres.layout_for(run / "pg")
    http = f"http://{LOOPBACK}"
    specs = _nats_specs(config)
    specs += [
        ProcSpec(
            "postgres",
            postgres.postgres_argv(config.pg_port, pg_layout),
            ready_check=lambda: postgres.postgres_ready(config.pg_port),
            on_ready=lambda: postgres.ensure_database(config.pg_port),
            stop_signal=signal.SIGINT,  # fast shutdown; SIGTERM waits for clients to leave
            user=pg_layout.user,
        ),
    ]
    for name, script, attr in SERVICES:
        port: int = getattr(config, attr)
        service = role_env(config, env, nats_auth.PROCESS_ROLES[name])
        if name == "auth":
            service["CHAT_AUTH_SIGNING_KEY_FILE"] = str(config.signing_key_file)
        if name == "notify" and _webhook_needs_secret(service):
            service["CHAT_NOTIFY_WEBHOOK_SECRET_FILE"] = str(config.webhook_secret_file)
        specs.append(
            ProcSpec(
                name, [_script(config, script)], env=service, ready_url=f"{http}:{port}/readyz"
            )
        )
    api_ports = config.server_api_ports()
    for n, port in enumerate(config.gateway_ports(), start=1):
        gateway = dict(role_env(config, env, "gateway"), CHAT_GATEWAY_PORT=str(port),
                       CHAT_GATEWAY_NODE_ID=f"gw-{n}")
        gateway.setdefault("CHAT_SERVER_API_KEYS_FILE", str(config.server_api_keys_file))
        if api_ports:
            gateway["CHAT_SERVER_API_PORT"] = str(api_ports[n - 1])
        specs.append(
            ProcSpec(
                f"gateway-{n}",
                [_script(config, GATEWAY_SCRIPT)],
                env=gateway,
                ready_url=f"{http}:{port}/readyz",
            )
        )
    caddy_dir = run / "caddy"
    specs.append(
        ProcSpec(
            "lb",
            caddy.caddy_argv(caddy_dir / caddy.CADDYFILE),
            env=caddy.caddy_env(caddy_dir),
            # Through the proxy: proves Caddy reaches a ready gateway.
            ready_url=f"{config.url}/readyz",
        )
    )
    return specs


def _webhook_needs_secret(env: Mapping[str, str]) -> bool:
    """A webhook URL is set and no HMAC key for it: we make one (``prepare``)."""
    return bool(env.get("CHAT_NOTIFY_WEBHOOK_URL", "").strip()) and not (
        env.get("CHAT_NOTIFY_WEBHOOK_SECRET") or env.get("CHAT_NOTIFY_WEBHOOK_SECRET_FILE"))


def ensure_webhook_secret(path: Path) -> Path:
    """A random HMAC key in ``path`` (dir 0700, file 0600), made once and kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


def ensure_server_api_keys(path: Path) -> Path:
    """One key ``local`` with every scope in ``path`` (dir 0700, file 0600), made once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("# the server API's keys (README \"Server API\"): "
                      "<key-id>:<secret>:<scopes>\n")
            out.write(f"local:{secrets.token_urlsafe(32)}:"
                      "publish,disconnect,presence,rooms,users\n")
    path.chmod(0o600)
    return path


def _nats_specs(config: StackConfig) -> list[ProcSpec]:
    """One spec per node. In a cluster only the last waits: no node is healthy
    (JetStream has no meta leader) before a majority runs."""
    servers = config.nats_servers()

    def all_healthy() -> bool:
        return all(server.ready() for server in servers)

    specs = []
    for name, server in zip(config.nats_node_names(), servers, strict=True):
        last = server is servers[-1]
        specs.append(ProcSpec(
            name, nats.nats_argv(server.store_dir / nats.CONFIG_FILE),
            ready_check=all_healthy if last else None,
            ready_port=None if last else server.port,
        ))
    return specs


def prepare(config: StackConfig) -> None:
    """One-off work before any process starts: dirs, NATS credentials and
    configs, initdb, Caddyfile. Idempotent (credentials are kept once made)."""
    run = config.run_dir
    run.mkdir(parents=True, exist_ok=True)
    creds = nats_auth.NatsCredentials.load_or_create(config.nats_auth_dir)
    for server in config.nats_servers(creds.authorization(config.stream_partitions)):
        nats.write_config(server.store_dir, server.config_text())
    auth_dir = config.signing_key_file.parent
    auth_dir.mkdir(exist_ok=True)
    auth_dir.chmod(0o700)  # holds the private signing key
    postgres.prepare(run / "pg")
    if _webhook_needs_secret(os.environ):
        ensure_webhook_secret(config.webhook_secret_file)
    if not os.environ.get("CHAT_SERVER_API_KEYS_FILE"):
        ensure_server_api_keys(config.server_api_keys_file)
    caddy.write_caddyfile(run / "caddy", config.lb_port, config.gateway_ports())


def write_state(config: StackConfig) -> None:
    """Remember the URL, so ``up``/``status`` from another shell can print it."""
    state = {"url": config.url, "lb_port": config.lb_port}
    (config.run_dir / STATE_FILE).write_text(json.dumps(state) + "\n")


def read_url(run_dir: Path) -> str | None:
    try:
        url = json.loads((run_dir / STATE_FILE).read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(url)


def clear_state(run_dir: Path) -> None:
    (run_dir / STATE_FILE).unlink(missing_ok=True)
