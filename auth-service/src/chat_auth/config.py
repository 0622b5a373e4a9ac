"""AuthSettings: everything chat-auth reads from the environment, once, at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from chat_contract.claims import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from chat_kit.passwords import HashSettings
from chat_kit.settings import (
    CommonSettings,
    SettingsError,
    env_bool,
    env_float,
    env_int,
    env_secret,
    env_str,
)

KEY_VAR = "CHAT_AUTH_SIGNING_KEY"
KEY_FILE_VAR = f"{KEY_VAR}_FILE"


@dataclass(frozen=True)
class AuthSettings:
    port: int
    database_url: str = field(repr=False)  # may carry a password
    # PEM of the Ed25519 private key; empty when it is still to be generated.
    signing_key_pem: str = field(repr=False)
    # Where a dev key is generated on first run (only when dev_key is on).
    signing_key_file: Path | None
    dev_key: bool
    issuer: str
    audience: str
    access_ttl: int
    refresh_ttl: int
    # A used refresh token presented again within this many seconds is taken
    # for two tabs racing (rejected, nothing revoked); later it is a replay.
    reuse_grace: float
    common: CommonSettings
    # Login throttling (chat_kit.throttle.LoginThrottle): failures per
    # (username, address) pair / per address / per username from all
    # addresses, within the window; 0 turns a limit off.
    login_max_failures: int = 5
    login_max_failures_per_address: int = 50
    login_window: float = 300.0
    login_max_failures_per_user: int = 100
    # Registrations (chat_kit.throttle.RegistrationThrottle): per address per
    # window, and per replica per second with bursts; 0 turns a limit off.
    register_per_address: int = 20
    register_address_window: float = 600.0
    register_rate: float = 5.0
    register_burst: int = 20
    # The argon2 pool's bound (chat_kit.passwords).
    hashing: HashSettings = field(default_factory=HashSettings)

    @classmethod
    def from_env(cls) -> AuthSettings:
        dev_key = env_bool("CHAT_AUTH_DEV_KEY", True)
        pem, key_file = _signing_key(dev_key)
        return cls(
            port=env_int("CHAT_AUTH_PORT", 8091, minimum=0),
            database_url=env_str("CHAT_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/chat"),
            signing_key_pem=pem,
            signing_key_file=key_file,
            dev_key=dev_key,
            issuer=env_str("CHAT_JWT_ISSUER", DEFAULT_ISSUER),
            audience=env_str("CHAT_JWT_AUDIENCE", DEFAULT_AUDIENCE),
            access_ttl=env_int("CHAT_AUTH_ACCESS_TTL", 900, minimum=1),
            refresh_ttl=env_int("CHAT_AUTH_REFRESH_TTL", 30 * 24 * 3600, minimum=1),
            reuse_grace=env_float("CHAT_AUTH_REUSE_GRACE", 5.0),
            common=CommonSettings.from_env(),
            login_max_failures=env_int("CHAT_AUTH_LOGIN_MAX_FAILURES", 5, minimum=0),
            login_max_failures_per_address=env_int("CHAT_AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS",
                                                   50, minimum=0),
            login_window=env_float("CHAT_AUTH_LOGIN_WINDOW", 300.0, minimum=1.0),
            login_max_failures_per_user=env_int("CHAT_AUTH_LOGIN_MAX_FAILURES_PER_USER", 100,
                                                minimum=0),
            register_per_address=env_int("CHAT_AUTH_REGISTER_PER_ADDRESS", 20, minimum=0),
            register_address_window=env_float("CHAT_AUTH_REGISTER_ADDRESS_WINDOW", 600.0,
                                              minimum=1.0),
            register_rate=env_float("CHAT_AUTH_REGISTER_RATE", 5.0, minimum=0.0),
            register_burst=env_int("CHAT_AUTH_REGISTER_BURST", 20, minimum=1),
            hashing=HashSettings.from_env(),
        )


def _signing_key(dev_key: bool) -> tuple[str, Path | None]:
    """``env_secret`` semantics, except that a missing ``_FILE`` may become a dev key."""
    raw_path = os.environ.get(KEY_FILE_VAR)
    if raw_path and not Path(raw_path).exists():
        if not dev_key:
            raise SettingsError(
                f"{KEY_FILE_VAR}: {raw_path} does not exist "
                "(set CHAT_AUTH_DEV_KEY=true to generate a development key there)"
            )
        return "", Path(raw_path)
    pem = env_secret(KEY_VAR)
    if not pem and not dev_key:
        raise SettingsError(
            f"{KEY_VAR} or {KEY_FILE_VAR} is required when CHAT_AUTH_DEV_KEY is off"
        )
    return pem, None
