"""A minimal asyncio WebSocket client for load generation.

The benchmark shares 2 cores with the servers it measures, so its client must
be cheap: no per-frame objects, no per-message tasks. It handles what a chat
client needs: the upgrade, masked text frames out, unmasked text frames in,
answering pings, and noticing close.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable


class WsClient(asyncio.Protocol):
    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.handshake = asyncio.get_running_loop().create_future()
        self.upgraded = False
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, host: str, port: int, path: str,
                      on_text: Callable[[bytes], None]) -> WsClient:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(on_text), host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        assert proto.transport is not None
        proto.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        await asyncio.wait_for(proto.handshake, 10)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during handshake"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.handshake.set_exception(ConnectionError(bytes(self.buf[:80]).decode()))
                return
            del self.buf[: end + 4]
            self.upgraded = True
            self.handshake.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head: pos + head + length])
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x9:
                self._write(0xA, payload)  # pong
            elif opcode == 0x8:
                if self.transport is not None:
                    self.transport.close()
        del buf[:pos]

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        m = int.from_bytes(mask * ((n + 3) // 4 or 1), "big") >> (8 * ((4 - n % 4) % 4))
        masked = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big") if n else b""
        self.transport.write(head + mask + masked)

    def send_text(self, payload: bytes) -> None:
        self._write(0x1, payload)

    def close(self) -> None:
        self._write(0x8, struct.pack("!H", 1000))
