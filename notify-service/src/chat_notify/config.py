"""Notify-service configuration, read once at start (README "Configuration")."""

from __future__ import annotations

from dataclasses import dataclass, field

from chat_kit.settings import CommonSettings, SettingsError, env_float, env_int, env_secret, env_str

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/chat"


@dataclass(frozen=True)
class NotifySettings:
    common: CommonSettings
    port: int = 8094
    # May carry a password: read through *_FILE too, and kept out of repr.
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    # Empty: the service runs, acks every record and sends nothing (disabled).
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhook_timeout: float = 10.0
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # Chat messages being resolved and delivered at once (per instance), and
    # webhook requests in flight at once (the HTTP connection pool).
    concurrency: int = 32
    webhook_concurrency: int = 32
    # Bound on records pushed but not yet acked, all instances together.
    max_ack_pending: int = 1000
    # Records older than this when they reach us (a backlog after an outage)
    # are acked unsent: a notification hours late is noise. 0 = no bound.
    max_age: float = 3600.0
    # How long room members, user names and block lists are cached.
    cache_ttl: float = 10.0
    text_max: int = 200
    dead_max_age: float = 14 * 24 * 3600.0
    dead_max_bytes: int = 128 * 1024 * 1024
    db_pool: int = 4

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)

    @classmethod
    def from_env(cls) -> NotifySettings:
        url = env_str("CHAT_NOTIFY_WEBHOOK_URL", "").strip()
        secret = env_secret("CHAT_NOTIFY_WEBHOOK_SECRET")
        if url and not url.startswith(("http://", "https://")):
            raise SettingsError(f"CHAT_NOTIFY_WEBHOOK_URL: not an http(s) URL: {url!r}")
        if url and not secret:
            raise SettingsError("CHAT_NOTIFY_WEBHOOK_SECRET (or _FILE) is required "
                                "with CHAT_NOTIFY_WEBHOOK_URL: webhooks are always signed")
        base = env_float("CHAT_NOTIFY_BACKOFF_BASE", 0.5, minimum=0.0)
        cap = env_float("CHAT_NOTIFY_BACKOFF_CAP", 30.0, minimum=0.0)
        if cap < base:
            raise SettingsError(f"CHAT_NOTIFY_BACKOFF_CAP ({cap}) must be >= "
                                f"CHAT_NOTIFY_BACKOFF_BASE ({base})")
        return cls(
            common=CommonSettings.from_env(),
            port=env_int("CHAT_NOTIFY_PORT", 8094, minimum=0),
            database_url=env_secret("CHAT_DATABASE_URL", DEFAULT_DATABASE_URL),
            webhook_url=url,
            webhook_secret=secret,
            webhook_timeout=env_float("CHAT_NOTIFY_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
            max_attempts=env_int("CHAT_NOTIFY_MAX_ATTEMPTS", 5, minimum=1),
            backoff_base=base,
            backoff_cap=cap,
            concurrency=env_int("CHAT_NOTIFY_CONCURRENCY", 32, minimum=1),
            webhook_concurrency=env_int("CHAT_NOTIFY_WEBHOOK_CONCURRENCY", 32, minimum=1),
            max_ack_pending=env_int("CHAT_NOTIFY_MAX_ACK_PENDING", 1000, minimum=1),
            max_age=env_float("CHAT_NOTIFY_MAX_AGE", 3600.0, minimum=0.0),
            cache_ttl=env_float("CHAT_NOTIFY_CACHE_TTL", 10.0, minimum=0.0),
            text_max=env_int("CHAT_NOTIFY_TEXT_MAX", 200, minimum=1),
            dead_max_age=env_float("CHAT_NOTIFY_DEAD_MAX_AGE", 14 * 24 * 3600.0, minimum=1.0),
            dead_max_bytes=env_int("CHAT_NOTIFY_DEAD_MAX_BYTES", 128 * 1024 * 1024, minimum=1),
            db_pool=env_int("CHAT_NOTIFY_DB_POOL", 4, minimum=1),
        )
