"""Server-to-client WebSocket text frames, built once per event.

Server frames are unmasked (RFC 6455 §5.1), so the bytes of one event are the
same for every socket: building the frame once and writing it to each
transport saves the per-socket framing a library ``send`` would redo.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, n) + payload
