"""History-service configuration, read once at start (README "Configuration")."""

from __future__ import annotations

from dataclasses import dataclass, field

from chat_contract import limits
from chat_kit.passwords import HashSettings
from chat_kit.settings import CommonSettings, SettingsError, env_float, env_int, env_secret

# The internal page limit: `join` with `since` asks for up to MISSED_MAX (500,
# docs/protocol.md §3.3); the gateway enforces the client-facing PAGE_MAX rule
# of `history` itself.
MAX_LIMIT = limits.MISSED_MAX


@dataclass(frozen=True)
class HistorySettings:
    common: CommonSettings
    port: int
    # May carry a password: read through *_FILE too, and kept out of repr.
    database_url: str = field(repr=False)
    batch: int
    linger: float
    catchup_timeout: float
    # Room passwords (README "Security"): new ones per user per minute (0 off),
    # and the argon2 pool's bound (chat_kit.passwords).
    room_password_rate: int = 5
    hashing: HashSettings = field(default_factory=HashSettings)
    # Capacity (README "Capacity"): one pool per class of work, so searches
    # cannot starve storage or joins; defaults so tests may leave them out.
    ingest_pool: int = 4
    interactive_pool: int = 8
    search_pool: int = 3
    interactive_timeout: float = 5.0
    search_timeout: float = 2.0
    search_per_user: int = 2
    searches_per_window: int = 30
    search_window: float = 60.0
    # Room creation (README "Rooms"): per user, per window; rooms owned at most.
    room_creates_per_window: int = 10
    room_create_window: float = 60.0
    rooms_owned_max: int = 100
    # Reactions (README "Reactions, threads, mentions"): distinct emoji on one message.
    reactions_per_message: int = 20
    # Attachments (README "Attachments"): bytes of uploads one user may hold,
    # how long an upload may stay unattached, how often expired ones are swept.
    attachment_quota: int = 100 << 20
    attachment_ttl: float = 86400.0
    attachment_sweep: float = 300.0

    @classmethod
    def from_env(cls) -> HistorySettings:
        batch = env_int("CHAT_HISTORY_BATCH", 500, minimum=1)
        if batch > 10_000:
            # One INSERT carries the whole batch; beyond this a batch only adds latency.
            raise SettingsError(f"CHAT_HISTORY_BATCH: must be <= 10000, got {batch}")
        return cls(
            common=CommonSettings.from_env(),
            port=env_int("CHAT_HISTORY_PORT", 8092, minimum=0),
            database_url=env_secret(
                "CHAT_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/chat"
            ),
            batch=batch,
            # The linger: while the stream is busy, a batch gathers this long
            # after the previous one began unless it reaches CHAT_HISTORY_BATCH
            # first, so one INSERT and one burst of acks per linger instead of
            # per handful of messages. A quiet stream never waits (batching.py).
            # The name is from when this was the pull's fetch timeout.
            linger=env_float("CHAT_HISTORY_FETCH_WAIT", 0.05, minimum=0.005),
            catchup_timeout=env_float("CHAT_HISTORY_CATCHUP_TIMEOUT", 1.5, minimum=0.01),
            room_password_rate=env_int("CHAT_HISTORY_ROOM_PASSWORD_RATE", 5, minimum=0),
            hashing=HashSettings.from_env(),
            ingest_pool=env_int("CHAT_HISTORY_DB_INGEST_POOL", 4, minimum=1),
            interactive_pool=env_int("CHAT_HISTORY_DB_POOL", 8, minimum=1),
            search_pool=env_int("CHAT_HISTORY_DB_SEARCH_POOL", 3, minimum=1),
            interactive_timeout=env_float("CHAT_HISTORY_DB_TIMEOUT", 5.0, minimum=0.1),
            search_timeout=env_float("CHAT_HISTORY_SEARCH_TIMEOUT", 2.0, minimum=0.1),
            search_per_user=env_int("CHAT_HISTORY_SEARCH_PER_USER", 2, minimum=1),
            searches_per_window=env_int("CHAT_HISTORY_SEARCH_RATE", 30, minimum=0),
            search_window=env_float("CHAT_HISTORY_SEARCH_WINDOW", 60.0, minimum=1.0),
            room_creates_per_window=env_int("CHAT_HISTORY_ROOM_CREATE_RATE", 10, minimum=0),
            room_create_window=env_float("CHAT_HISTORY_ROOM_CREATE_WINDOW", 60.0, minimum=1.0),
            rooms_owned_max=env_int("CHAT_HISTORY_ROOMS_OWNED_MAX", 100, minimum=0),
            reactions_per_message=env_int("CHAT_HISTORY_REACTIONS_PER_MESSAGE", 20, minimum=1),
            attachment_quota=env_int("CHAT_ATTACHMENT_QUOTA_BYTES", 100 << 20, minimum=0),
            attachment_ttl=env_float("CHAT_ATTACHMENT_UNATTACHED_TTL", 86400.0, minimum=1.0),
            attachment_sweep=env_float("CHAT_HISTORY_ATTACHMENT_SWEEP", 300.0, minimum=0.1),
        )
