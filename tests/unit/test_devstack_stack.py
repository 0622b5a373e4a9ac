"""chat_devstack.stack: settings from the environment, the process list and the
NATS node configs built from them (no processes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from chat_devstack.nats_auth import NatsCredentials
from chat_devstack.stack import StackConfig, build_specs, service_env


def _bin_dir(tmp_path: Path) -> Path:
    for name in ("chat-auth", "chat-history", "chat-presence", "chat-notify", "chat-gateway"):
        path = tmp_path / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return tmp_path


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    config = StackConfig.from_env({})
    assert config.run_dir == tmp_path / ".run"
    assert (config.nats_port, config.nats_monitor_port, config.pg_port) == (4222, 8222, 5432)
    assert (config.lb_port, config.gateways, config.gateway_ports()) == (8080, 2, [8081, 8082])
    assert (config.auth_port, config.history_port, config.presence_port) == (8091, 8092, 8093)
    assert config.notify_port == 8094
    assert config.url == "http://127.0.0.1:8080"
    assert config.database_url == "postgresql://postgres@127.0.0.1:5432/chat"
    assert config.nats_url == "nats://127.0.0.1:4222"


def test_overrides(tmp_path: Path) -> None:
    config = StackConfig.from_env(
        {
            "CHAT_RUN_DIR": str(tmp_path / "r"),
            "CHAT_NATS_PORT": "14222",
            "CHAT_NATS_MONITOR_PORT": "0",
            "CHAT_PG_PORT": "15432",
            "CHAT_LB_PORT": "18080",
            "CHAT_GATEWAYS": "3",
            "CHAT_GATEWAY_BASE_PORT": "18081",
            "CHAT_AUTH_PORT": "18091",
            "CHAT_HISTORY_PORT": "18092",
            "CHAT_PRESENCE_PORT": "18093",
        }
    )
    assert config.run_dir == tmp_path / "r"
    assert config.nats_monitor_port is None  # 0 turns the monitor off
    assert config.gateway_ports() == [18081, 18082, 18083]
    assert config.url == "http://127.0.0.1:18080"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHAT_PG_PORT": "five"}, "CHAT_PG_PORT must be an integer"),
        ({"CHAT_GATEWAYS": "0"}, "CHAT_GATEWAYS must be at least 1"),
        ({"CHAT_LB_PORT": "8081"}, "both use port 8081"),  # collides with gateway-1
        ({"CHAT_GATEWAYS": "11"}, "both use port 8091"),  # gateway-11 would take auth's port
        ({"CHAT_NATS_PORT": "70000"}, "not a valid port"),
    ],
)
def test_invalid_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StackConfig.from_env(env)


def test_specs_order_env_and_signals(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path / "run", bin_dir=_bin_dir(tmp_path))
    specs = build_specs(config, base_env={"PATH": "/usr/bin", "CHAT_LOG_FORMAT": "console"})
    by_name = {s.name: s for s in specs}
    assert [s.name for s in specs] == [
        "nats", "postgres", "auth", "history", "presence", "notify", "gateway-1", "gateway-2",
        "lb",
    ]  # fmt: skip

    nats_argv = list(by_name["nats"].argv)
    assert nats_argv[1:] == ["-c", str(tmp_path / "run" / "nats" / "nats.conf")]

    pg = by_name["postgres"]
    assert pg.stop_signal == signal.SIGINT  # fast shutdown
    assert pg.user == ("chatpg" if os.geteuid() == 0 else None)
    assert "listen_addresses=127.0.0.1" in pg.argv

    auth = by_name["auth"]
    assert auth.env is not None
    assert auth.env["CHAT_AUTH_SIGNING_KEY_FILE"] == str(tmp_path / "run/auth/signing-key.pem")
    assert auth.ready_url == "http://127.0.0.1:8091/readyz"
    assert auth.env["CHAT_LOG_FORMAT"] == "console"  # a developer's choice wins
    assert auth.env["PATH"] == "/usr/bin"

    gw2 = by_name["gateway-2"]
    assert gw2.env is not None
    assert gw2.env["CHAT_GATEWAY_PORT"] == "8082"
    assert gw2.env["CHAT_GATEWAY_NODE_ID"] == "gw-2"
    assert gw2.env["CHAT_NATS_URL"] == "nats://127.0.0.1:4222"
    assert gw2.env["CHAT_DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/chat"
    assert gw2.env["CHAT_PRESENCE_PORT"] == "8093"
    assert gw2.argv == [str(tmp_path / "chat-gateway")]
    assert "CHAT_GATEWAY_PORT" not in (by_name["history"].env or {})

    assert by_name["lb"].ready_url == "http://127.0.0.1:8080/readyz"


def test_notify_gets_a_webhook_only_when_configured(tmp_path: Path) -> None:
    from chat_devstack.stack import ensure_webhook_secret

    config = StackConfig(run_dir=tmp_path / "run", bin_dir=_bin_dir(tmp_path))
    notify = next(s for s in build_specs(config, base_env={}) if s.name == "notify")
    assert notify.env is not None and notify.ready_url == "http://127.0.0.1:8094/readyz"
    assert not notify.env.get("CHAT_NOTIFY_WEBHOOK_URL")  # off: runs, sends nothing
    assert "CHAT_NOTIFY_WEBHOOK_SECRET_FILE" not in notify.env
    url = {"CHAT_NOTIFY_WEBHOOK_URL": "http://127.0.0.1:9999/hook"}
    notify = next(s for s in build_specs(config, base_env=url) if s.name == "notify")
    assert notify.env is not None
    assert notify.env["CHAT_NOTIFY_WEBHOOK_URL"] == url["CHAT_NOTIFY_WEBHOOK_URL"]
    assert notify.env["CHAT_NOTIFY_WEBHOOK_SECRET_FILE"] == str(config.webhook_secret_file)
    # A key of one's own wins over the generated one.
    mine = {**url, "CHAT_NOTIFY_WEBHOOK_SECRET_FILE": "/etc/mine"}
    notify = next(s for s in build_specs(config, base_env=mine) if s.name == "notify")
    assert notify.env is not None and notify.env["CHAT_NOTIFY_WEBHOOK_SECRET_FILE"] == "/etc/mine"
    # The generated key: private, made once, kept.
    path = ensure_webhook_secret(config.webhook_secret_file)
    first = path.read_text()
    assert len(first.strip()) == 64 and (path.stat().st_mode & 0o777) == 0o600
    assert ensure_webhook_secret(path).read_text() == first


def test_log_format_defaults_to_json() -> None:
    assert service_env(StackConfig(), base={})["CHAT_LOG_FORMAT"] == "json"


def test_missing_service_script_is_named(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path / "run", bin_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="chat-auth"):
        build_specs(config)


def test_cluster_nodes_ports_routes_and_replicas(tmp_path: Path) -> None:
    config = StackConfig.from_env({"CHAT_NATS_NODES": "3", "CHAT_RUN_DIR": str(tmp_path / "run"),
                                   "CHAT_BIN_DIR": str(_bin_dir(tmp_path))})
    specs = build_specs(config, base_env={})
    names = [s.name for s in specs]
    assert names[:4] == ["nats-1", "nats-2", "nats-3", "postgres"]
    # Only the last node waits for every node's health: none is healthy alone.
    assert [s.ready_port for s in specs[:3]] == [4222, 4223, None]
    assert specs[2].ready_check is not None
    history = next(s for s in specs if s.name == "history")
    assert history.env is not None
    assert history.env["CHAT_NATS_URL"] == (
        "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224")
    assert history.env["CHAT_STREAM_REPLICAS"] == "3"
    text = config.nats_servers()[1].config_text()
    assert 'server_name: "n2"' in text
    assert 'listen: "127.0.0.1:6223"' in text
    assert '"nats://127.0.0.1:6222", "nats://127.0.0.1:6223", "nats://127.0.0.1:6224"' in text
    assert 'http: "127.0.0.1:8223"' in text


@pytest.mark.parametrize("nodes", ["0", "2"])
def test_cluster_sizes_that_cannot_elect_are_refused(nodes: str) -> None:
    with pytest.raises(ValueError, match="CHAT_NATS_NODES"):
        StackConfig.from_env({"CHAT_NATS_NODES": nodes})


def test_cluster_ports_collide_with_others_are_named() -> None:
    with pytest.raises(ValueError, match="both use port 8224"):
        StackConfig.from_env({"CHAT_NATS_NODES": "3", "CHAT_NATS_MONITOR_PORT": "8222",
                              "CHAT_NATS_CLUSTER_PORT": "8224"})


def test_every_process_logs_in_as_its_role(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path / "run", bin_dir=_bin_dir(tmp_path))
    inherited = {"CHAT_NATS_USER": "someone", "CHAT_NATS_CREDS": "/x.creds",
                 "CHAT_NATS_PASSWORD": "theirs"}
    specs = {s.name: s for s in build_specs(config, base_env=inherited)}
    auth_dir = tmp_path / "run" / "nats-auth"
    for name, role in (("auth", "auth"), ("history", "history"), ("presence", "presence"),
                       ("notify", "notify"), ("gateway-1", "gateway"), ("gateway-2", "gateway")):
        env = specs[name].env
        assert env is not None
        assert env["CHAT_NATS_USER"] == env["CHAT_NATS_ROLE"] == role
        assert env["CHAT_NATS_PASSWORD_FILE"] == str(auth_dir / f"{role}.password")
        # Credentials of the launching shell never leak into a process.
        assert "CHAT_NATS_CREDS" not in env and "CHAT_NATS_PASSWORD" not in env


def test_every_node_config_carries_the_users(tmp_path: Path) -> None:
    creds = NatsCredentials.load_or_create(tmp_path / "nats-auth")
    config = StackConfig.from_env({"CHAT_NATS_NODES": "3", "CHAT_RUN_DIR": str(tmp_path / "run")})
    for server in config.nats_servers(creds.authorization()):
        text = server.config_text()
        assert "authorization {" in text
        for role, password in creds.passwords.items():
            assert f'user: "{role}"\n      password: "{password}"\n' in text
        assert "no_auth_user" not in text  # no anonymous access


def test_partitions_put_the_mapping_and_partition_rights_in_every_node(tmp_path: Path) -> None:
    from chat_kit.stream import subject_mapping

    config = StackConfig.from_env({"CHAT_NATS_NODES": "3", "CHAT_STREAM_PARTITIONS": "3",
                                   "CHAT_RUN_DIR": str(tmp_path / "run")})
    creds = NatsCredentials.load_or_create(tmp_path / "auth")
    for server in config.nats_servers(creds.authorization(config.stream_partitions)):
        assert server.mappings == subject_mapping(3)
        text = server.config_text()
        assert '"chat.room.*": "chat.part.{{partition(3,1)}}.{{wildcard(1)}}"' in text
        # history-service owns each partition stream and takes its pushes.
        assert "$JS.API.STREAM.CREATE.CHAT_2" in text and "chat.deliver.history.CHAT_0" in text
        assert '"chat.part.2.*"' in text  # the gateway's publish, as the server checks it
        assert "$JS.API.STREAM.CREATE.CHAT\"" not in text
    single = StackConfig.from_env({"CHAT_RUN_DIR": str(tmp_path / "run")})
    assert single.nats_servers()[0].mappings == {}
    with pytest.raises(ValueError, match="CHAT_STREAM_PARTITIONS"):
        StackConfig.from_env({"CHAT_STREAM_PARTITIONS": "0"})
