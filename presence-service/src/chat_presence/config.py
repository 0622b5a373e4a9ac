"""Presence-service configuration, read once at start (README "Configuration")."""

from __future__ import annotations

from dataclasses import dataclass

from chat_kit.settings import CommonSettings, env_float, env_int


@dataclass(frozen=True)
class PresenceSettings:
    common: CommonSettings
    port: int
    # Seconds a live entry outlives its last refresh (the bucket's TTL): a
    # killed gateway's users are reported `leave` this long after it died.
    # Gateways read it from the bucket and refresh at a third of it.
    ttl: int
    # Seconds the leader lease lasts unrenewed: how long events pause when
    # the leading instance dies without a goodbye.
    lease: int
    # Bound on how long a members query waits for this instance to have seen
    # the caller's own presence write.
    members_wait: float

    @classmethod
    def from_env(cls) -> PresenceSettings:
        return cls(
            common=CommonSettings.from_env(),
            port=env_int("CHAT_PRESENCE_PORT", 8093, minimum=0),
            ttl=env_int("CHAT_PRESENCE_TTL", 30, minimum=2),
            lease=env_int("CHAT_PRESENCE_LEASE", 5, minimum=1),
            members_wait=env_float("CHAT_PRESENCE_MEMBERS_WAIT", 1.0, minimum=0.0),
        )
