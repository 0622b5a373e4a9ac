"""``chat-auth``: run the auth service until SIGTERM."""

from __future__ import annotations

import sys

from chat_kit import runtime
from chat_kit.settings import SettingsError

from .config import AuthSettings
from .service import AuthService

NAME = "auth-service"


def main() -> None:
    try:
        settings = AuthSettings.from_env()
    except SettingsError as exc:
        # A configuration mistake is one line, not a traceback.
        sys.exit(f"{NAME}: {exc}")
    runtime.main(NAME, settings.port, AuthService(settings), settings.common)


if __name__ == "__main__":
    main()
