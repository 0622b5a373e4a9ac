"""Gateway settings (README "Configuration" lists them with their defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from chat_contract.claims import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from chat_kit.settings import (
    CommonSettings,
    default_node_id,
    env_bool,
    env_float,
    env_int,
    env_str,
)
from chat_kit.stream import StreamSettings

WS_PROTOCOLS = ("slim", "websockets-sansio", "websockets")


def _ws_protocol(value: str) -> str:
    if value not in WS_PROTOCOLS:
        raise ValueError(f"CHAT_GATEWAY_WS_PROTOCOL must be one of {', '.join(WS_PROTOCOLS)}")
    return value


@dataclass(frozen=True)
class GatewaySettings:
    common: CommonSettings
    port: int
    node_id: str
    jwt_issuer: str
    jwt_audience: str
    max_frame_bytes: int
    auth_timeout: float
    heartbeat: int
    idle_timeout: float
    send_rate: float
    send_burst: int
    max_rooms: int
    outbound_buffer_bytes: int
    # A join of an unknown room creates it (public, the joiner as owner).
    auto_create_rooms: bool
    drain_timeout: float
    # Hardening (README "Limits"): abuse → 1008, per-user connection cap → 4409.
    abuse_strikes: int = 30
    abuse_window: float = 10.0
    max_connections_per_user: int = 10
    room_member_cap: int = 0
    # Joins being checked at once on this gateway (a reconnect storm queues
    # behind them instead of flooding history-service).
    joins_in_flight: int = 64
    # Seconds a room stays subscribed after its last local member left.
    room_linger: float = 30.0
    # Issue 12 (README "Limits"): join/leave bucket per socket; connection caps
    # per client address and per gateway, and the gateway's outbound budget
    # (1013 beyond them); how long a slow consumer's close may take; how often
    # held rooms are re-checked against history-service (lost notices).
    join_rate: float = 5.0
    join_burst: int = 100
    max_connections_per_address: int = 1000
    max_connections: int = 10_000
    outbound_budget_bytes: int = 256 << 20
    slow_close_timeout: float = 10.0
    reconcile_interval: float = 30.0
    # Peers whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips:
    # addresses or networks, comma-separated, "*" any); others are the client.
    trusted_proxies: str = "127.0.0.1"
    # The WebSocket server under uvicorn (main.py): "slim" (wsserver.SlimProtocol)
    # or one of uvicorn's ("websockets-sansio", "websockets");
    # permessage-deflate off unless asked for.
    ws_protocol: str = "slim"
    ws_deflate: bool = False
    # Attachments (README "Attachments"): the largest upload, the thumbnail's
    # box, the most pixels an image may have (decompression bombs).
    attachment_max_bytes: int = 10 << 20
    attachment_thumb_px: int = 320
    attachment_max_pixels: int = 50_000_000
    # Which stream holds a room (CHAT_STREAM_PARTITIONS; gateways only read streams).
    stream: StreamSettings = field(default_factory=StreamSettings)

    @classmethod
    def from_env(cls) -> GatewaySettings:
        port = env_int("CHAT_GATEWAY_PORT", 8081, minimum=0)
        return cls(
            common=CommonSettings.from_env(),
            stream=StreamSettings.from_env(),
            port=port,
            node_id=env_str("CHAT_GATEWAY_NODE_ID", default_node_id(port)),
            jwt_issuer=env_str("CHAT_JWT_ISSUER", DEFAULT_ISSUER),
            jwt_audience=env_str("CHAT_JWT_AUDIENCE", DEFAULT_AUDIENCE),
            max_frame_bytes=env_int("CHAT_GATEWAY_MAX_FRAME_BYTES", 16 * 1024, minimum=256),
            auth_timeout=env_float("CHAT_GATEWAY_AUTH_TIMEOUT", 5.0, minimum=0.1),
            heartbeat=env_int("CHAT_GATEWAY_HEARTBEAT", 25, minimum=1),
            idle_timeout=env_float("CHAT_GATEWAY_IDLE_TIMEOUT", 60.0, minimum=1.0),
            send_rate=env_float("CHAT_GATEWAY_SEND_RATE", 10.0, minimum=0.001),
            send_burst=env_int("CHAT_GATEWAY_SEND_BURST", 20, minimum=1),
            max_rooms=env_int("CHAT_GATEWAY_MAX_ROOMS", 100, minimum=1),
            outbound_buffer_bytes=env_int("CHAT_GATEWAY_OUTBOUND_BUFFER", 1 << 20, minimum=1024),
            auto_create_rooms=env_bool("CHAT_GATEWAY_AUTO_CREATE_ROOMS", True),
            drain_timeout=env_float("CHAT_GATEWAY_DRAIN_TIMEOUT", 5.0, minimum=0.0),
            abuse_strikes=env_int("CHAT_GATEWAY_ABUSE_STRIKES", 30, minimum=0),
            abuse_window=env_float("CHAT_GATEWAY_ABUSE_WINDOW", 10.0, minimum=0.1),
            max_connections_per_user=env_int("CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER", 10,
                                             minimum=0),
            room_member_cap=env_int("CHAT_GATEWAY_ROOM_MEMBER_CAP", 0, minimum=0),
            joins_in_flight=env_int("CHAT_GATEWAY_JOINS_IN_FLIGHT", 64, minimum=1),
            room_linger=env_float("CHAT_GATEWAY_ROOM_LINGER", 30.0, minimum=0.0),
            trusted_proxies=env_str("CHAT_GATEWAY_TRUSTED_PROXIES", "127.0.0.1"),
            join_rate=env_float("CHAT_GATEWAY_JOIN_RATE", 5.0, minimum=0.001),
            join_burst=env_int("CHAT_GATEWAY_JOIN_BURST", 100, minimum=1),
            max_connections_per_address=env_int("CHAT_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS",
                                                1000, minimum=0),
            max_connections=env_int("CHAT_GATEWAY_MAX_CONNECTIONS", 10_000, minimum=0),
            outbound_budget_bytes=env_int("CHAT_GATEWAY_OUTBOUND_BUDGET", 256 << 20,
                                          minimum=0),
            slow_close_timeout=env_float("CHAT_GATEWAY_SLOW_CLOSE_TIMEOUT", 10.0, minimum=0.1),
            reconcile_interval=env_float("CHAT_GATEWAY_RECONCILE_INTERVAL", 30.0, minimum=0.1),
            ws_protocol=_ws_protocol(env_str("CHAT_GATEWAY_WS_PROTOCOL", "slim")),
            ws_deflate=env_bool("CHAT_GATEWAY_WS_DEFLATE", False),
            attachment_max_bytes=env_int("CHAT_ATTACHMENT_MAX_BYTES", 10 << 20, minimum=1),
            attachment_thumb_px=env_int("CHAT_ATTACHMENT_THUMB_PX", 320, minimum=16),
            attachment_max_pixels=env_int("CHAT_ATTACHMENT_MAX_PIXELS", 50_000_000,
                                          minimum=1),
        )
