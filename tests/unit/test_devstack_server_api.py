"""chat-stack and the server API: a key made once (0600), each gateway's
internal port and keys file, the ports checked like the others."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from chat_devstack.stack import StackConfig, build_specs, ensure_server_api_keys
from chat_gateway.server_keys import SCOPES, ApiKeys


def _bin_dir(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("chat-auth", "chat-history", "chat-presence", "chat-notify", "chat-gateway"):
        (bin_dir / name).write_text("")
    return bin_dir


def test_the_key_is_made_once_private_and_usable(tmp_path: Path) -> None:
    path = ensure_server_api_keys(tmp_path / "server-api" / "keys")
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_server_api_keys(path).read_text() == first  # kept across restarts
    key_id, secret, _ = next(line for line in first.splitlines()
                             if not line.startswith("#")).split(":")
    assert ApiKeys.load(str(path)).authorize(f"{key_id}:{secret}", "users").scopes == set(SCOPES)


def test_each_gateway_gets_its_port_and_the_keys(tmp_path: Path) -> None:
    config = StackConfig.from_env({"CHAT_RUN_DIR": str(tmp_path / "run"),
                                   "CHAT_BIN_DIR": str(_bin_dir(tmp_path))})
    assert config.server_api_ports() == [8181, 8182]
    assert config.ports()["CHAT_SERVER_API_BASE_PORT (gateway-2)"] == 8182
    gateways = [s for s in build_specs(config, {}) if s.name.startswith("gateway-")]
    assert [g.env["CHAT_SERVER_API_PORT"] for g in gateways] == ["8181", "8182"]
    assert {g.env["CHAT_SERVER_API_KEYS_FILE"] for g in gateways} == {
        str(config.server_api_keys_file)}
    off = StackConfig.from_env({"CHAT_RUN_DIR": str(tmp_path / "run"),
                                "CHAT_SERVER_API_BASE_PORT": "0",
                                "CHAT_BIN_DIR": str(_bin_dir(tmp_path / "b"))})
    assert off.server_api_ports() == []
    assert all("CHAT_SERVER_API_PORT" not in (s.env or {}) for s in build_specs(off, {}))
    with pytest.raises(ValueError, match="both use port 8081"):
        StackConfig.from_env({"CHAT_SERVER_API_BASE_PORT": "8081"})
