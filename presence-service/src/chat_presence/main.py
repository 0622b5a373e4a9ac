"""``chat-presence``: run presence-service."""

from __future__ import annotations

from chat_kit import runtime

from .config import PresenceSettings
from .service import PresenceService


def main() -> None:
    settings = PresenceSettings.from_env()
    runtime.main("presence-service", settings.port, PresenceService(settings), settings.common)


if __name__ == "__main__":
    main()
