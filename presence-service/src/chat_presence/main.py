"""``chat-presence``: run presence-service."""

from __future__ import annotations

from dataclasses import dataclass

from nats.micro.service import Service
from starlette.routing import BaseRoute

from chat_kit import runtime
from chat_kit.bus import start_service
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings, env_int


@dataclass(frozen=True)
class PresenceSettings:
    common: CommonSettings
    port: int

    @classmethod
    def from_env(cls) -> PresenceSettings:
        return cls(common=CommonSettings.from_env(), port=env_int("CHAT_PRESENCE_PORT", 8093))


class PresenceService:
    def __init__(self) -> None:
        self._svc: Service | None = None

    async def start(self, rt: Runtime) -> None:
        # No endpoints yet; the micro service still answers $SRV.PING/INFO/STATS.
        self._svc = await start_service(rt.nc, "presence", "0.1.0", {})

    async def stop(self) -> None:
        if self._svc is not None:
            await self._svc.stop()

    def routes(self) -> list[BaseRoute]:
        return []


def main() -> None:
    settings = PresenceSettings.from_env()
    runtime.main("presence-service", settings.port, PresenceService(), settings.common)


if __name__ == "__main__":
    main()
