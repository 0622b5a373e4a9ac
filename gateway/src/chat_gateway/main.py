"""``chat-gateway``: run one gateway node."""

from __future__ import annotations

from chat_kit import runtime

from .component import Gateway
from .config import GatewaySettings


def main() -> None:
    settings = GatewaySettings.from_env()
    gateway = Gateway(settings)
    runtime.main("gateway", settings.port, gateway, settings.common,
                 server_options=gateway.server_options())


if __name__ == "__main__":
    main()
