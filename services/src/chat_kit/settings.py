"""Configuration read once at start from ``CHAT_*`` environment variables.

Each deployable declares a frozen dataclass and fills it with the helpers of
chat_kit.env (re-exported here); a bad value fails at start with the
variable's name, never later. This module holds what every process reads.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

# The helpers of chat_kit.env, re-exported: deployables' configs import them from here.
from .env import SettingsError as SettingsError
from .env import env_bool as env_bool
from .env import env_float as env_float
from .env import env_int as env_int
from .env import env_secret as env_secret
from .env import env_str as env_str
from .nats_auth import NatsAuthSettings


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
    nats_auth: NatsAuthSettings = field(default_factory=NatsAuthSettings)

    @classmethod
    def from_env(cls) -> CommonSettings:
        return cls(
            nats_url=env_str("CHAT_NATS_URL", "nats://127.0.0.1:4222"),
            log_level=env_str("CHAT_LOG_LEVEL", "info").upper(),
            log_format=env_str("CHAT_LOG_FORMAT", "json"),
            request_timeout=env_float("CHAT_REQUEST_TIMEOUT", 2.0, minimum=0.05),
            stream_replicas=stream_replicas(),
            host=env_str("CHAT_HOST", "127.0.0.1"),
            nats_auth=NatsAuthSettings.from_env(),
        )


def default_node_id(port: int) -> str:
    return f"{socket.gethostname()}-{port}"
