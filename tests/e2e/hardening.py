"""Helpers for the hardening tests (issue 5): a raw-socket WebSocket client that
can refuse to read, /metrics scraping, audit lines from the service logs, and a
stack with its own settings."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from waiting import wait_until

from .stack import Stack


def make_stack(nats_url: str, db_url: str, log_dir: Path, **env: str) -> Iterator[Stack]:
    s = Stack(nats_url, db_url, log_dir, extra_env=dict(env))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as {"name{labels}": value}."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def audit_lines(log_path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log_path.read_text(errors="replace").splitlines():
        if '"audit":true' not in raw:
            continue
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def wait_for(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Block until ``check()`` is true (``timeout`` scaled; see tests/waiting.py)."""
    wait_until(check, timeout, what)


class RawWs:
    """A WebSocket client on a plain socket: it reads only when told to.

    With a small receive buffer and no reads, the server's writes back up:
    the slow-consumer case. It never answers pings unless told to read.
    """

    def __init__(self, port: int, token: str, rcvbuf: int = 4096, source: str = "") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:  # another loopback address (127.0.0.x): another client address
            self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "closed during handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buf = b""

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def read_all(self, timeout: float) -> tuple[list[tuple[int, bytes]], bool]:
        """Read frames until EOF or ``timeout``: ([(opcode, payload)], eof)."""
        self.sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        eof = False
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
        frames = []
        buf = self.buf
        while len(buf) >= 2:
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            pos = 2
            if n == 126:
                n, pos = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                n, pos = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < pos + n:
                break
            frames.append((op, buf[pos:pos + n]))
            buf = buf[pos + n:]
        return frames, eof

    def close(self) -> None:
        self.sock.close()


def close_code_of(frames: list[tuple[int, bytes]]) -> int | None:
    for op, payload in frames:
        if op == 0x8 and len(payload) >= 2:
            return int(struct.unpack("!H", payload[:2])[0])
    return None
