"""``chat-gateway``: run one gateway node (the parts are wired in :mod:`.app`)."""

from __future__ import annotations

from chat_kit import runtime

from .app import App
from .config import GatewaySettings


def main() -> None:
    settings = GatewaySettings.from_env()
    app = App(settings)
    runtime.main("gateway", settings.port, app, settings.common,
                 server_options=app.server_options())


if __name__ == "__main__":
    main()
