"""``chat-gateway``: run one gateway node (the parts are wired in :mod:`.app`).

The WebSocket server under uvicorn (issue 13, measured on idle authenticated
sockets): :class:`~.wsserver.SlimProtocol` by default, uvicorn's
websockets-sansio protocol with less memory per socket;
``CHAT_GATEWAY_WS_PROTOCOL`` picks uvicorn's own (``websockets-sansio``,
``websockets``) for comparison (wsproto is not installed). permessage-deflate is off unless
``CHAT_GATEWAY_WS_DEFLATE`` turns it on: the gateway writes its frames
uncompressed straight to the transport (:mod:`.connection`), so compression
would only ever apply to the small frames clients send, while each
negotiating socket (every browser) would hold a zlib compressor and
decompressor (tens of KiB).
"""

from __future__ import annotations

from chat_kit import runtime

from .app import App
from .config import GatewaySettings
from .wsserver import SlimProtocol


def server_options(app: App, settings: GatewaySettings) -> dict[str, object]:
    ws: object = settings.ws_protocol
    if ws == "slim":
        ws = SlimProtocol
        SlimProtocol.serve_routes(app.routes)  # /ws without Starlette's routing around it
    return {**app.server_options(), "ws": ws,
            "ws_per_message_deflate": settings.ws_deflate}


def main() -> None:
    settings = GatewaySettings.from_env()
    app = App(settings)
    runtime.main("gateway", settings.port, app, settings.common,
                 server_options=server_options(app, settings))


if __name__ == "__main__":
    main()
