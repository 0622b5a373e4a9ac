"""``chat-history``: run the history service until SIGTERM."""

from __future__ import annotations

from chat_kit.runtime import main as run

from .config import HistorySettings
from .service import HistoryComponent


def main() -> None:
    settings = HistorySettings.from_env()
    run("history-service", settings.port, HistoryComponent(settings), settings.common)


if __name__ == "__main__":
    main()
