"""``chat-notify``: run notification-service until SIGTERM."""

from __future__ import annotations

from chat_kit.runtime import main as run

from .config import NotifySettings
from .service import NotifyComponent


def main() -> None:
    settings = NotifySettings.from_env()
    run("notify-service", settings.port, NotifyComponent(settings), settings.common)


if __name__ == "__main__":
    main()
