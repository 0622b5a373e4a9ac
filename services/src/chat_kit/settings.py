"""Configuration read once at start from ``CHAT_*`` environment variables.

Each deployable declares a frozen dataclass and fills it with these helpers; a
bad value fails at start with the variable's name, never later.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nats_auth import NatsAuthSettings


class SettingsError(ValueError):
    pass


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_secret(name: str, default: str = "") -> str:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE``."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {path}: {exc}") from None
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected a boolean, got {raw!r}")


def stream_replicas() -> int:
    """``CHAT_STREAM_REPLICAS``: replicas of the CHAT stream (chat_kit.stream) and
    of the presence buckets; read here so both agree."""
    return env_int("CHAT_STREAM_REPLICAS", 1, minimum=1)


@dataclass(frozen=True)
class CommonSettings:
    """Variables every process reads (README "Configuration")."""

    nats_url: str
    log_level: str
    log_format: str
    request_timeout: float
    stream_replicas: int
    host: str
    # NATS credentials, TLS and inbox prefix (chat_kit.nats_auth); none by default.
    nats_auth: NatsAuthSettings = field(default_factory=lambda: _no_nats_auth())

    @classmethod
    def from_env(cls) -> CommonSettings:
        from .nats_auth import NatsAuthSettings  # it builds on this module's helpers

        return cls(
            nats_url=env_str("CHAT_NATS_URL", "nats://127.0.0.1:4222"),
            log_level=env_str("CHAT_LOG_LEVEL", "info").upper(),
            log_format=env_str("CHAT_LOG_FORMAT", "json"),
            request_timeout=env_float("CHAT_REQUEST_TIMEOUT", 2.0, minimum=0.05),
            stream_replicas=stream_replicas(),
            host=env_str("CHAT_HOST", "127.0.0.1"),
            nats_auth=NatsAuthSettings.from_env(),
        )


def _no_nats_auth() -> NatsAuthSettings:
    from .nats_auth import NatsAuthSettings

    return NatsAuthSettings()


def default_node_id(port: int) -> str:
    return f"{socket.gethostname()}-{port}"
