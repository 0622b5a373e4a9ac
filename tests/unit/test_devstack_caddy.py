"""chat_devstack.caddy: the rendered Caddyfile is accepted by the real caddy
binary and says what we mean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chat_devstack.caddy import render_caddyfile, validate_caddyfile, write_caddyfile


def test_rendered_caddyfile_validates(tmp_path: Path) -> None:
    path = write_caddyfile(tmp_path, 18080, [18081, 18082, 18083])
    result = validate_caddyfile(path)
    assert "Valid configuration" in result.stdout + result.stderr


def test_admin_on_port_validates(tmp_path: Path) -> None:
    path = write_caddyfile(tmp_path, 18080, [18081], admin_port=12019)
    assert "admin 127.0.0.1:12019" in path.read_text()
    validate_caddyfile(path)


def test_caddyfile_contents() -> None:
    text = render_caddyfile(8080, [8081, 8082])
    assert ":8080 {" in text
    assert "bind 127.0.0.1" in text  # never listen beyond loopback
    assert "reverse_proxy 127.0.0.1:8081 127.0.0.1:8082 {" in text
    for directive in (
        "lb_policy round_robin",
        "health_uri /readyz",
        "health_interval 1s",
        "fail_duration",
        "lb_try_duration 5s",
        "flush_interval -1",
        "admin off",
        "auto_https off",
        "@metrics path /metrics",  # not public through the balancer
        "respond @metrics 404",
    ):
        assert directive in text


def test_no_upstreams_is_an_error() -> None:
    with pytest.raises(ValueError):
        render_caddyfile(8080, [])


def test_broken_caddyfile_fails_validation(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(render_caddyfile(8080, [8081]).replace("lb_policy", "lb_polcy"))
    with pytest.raises(subprocess.CalledProcessError):
        validate_caddyfile(path)
