"""What keeps one gateway up under too many sockets, pure (no I/O):

- :class:`ConnectionCaps`: at most ``per_address`` open sockets per client
  address and ``total`` per gateway; the socket past either is closed with
  1013 right after the upgrade (counted from the upgrade, so sockets that
  never authenticate count too).
- :class:`OutboundBudget`: the bytes buffered toward all clients of the
  gateway together. Each socket also has its own limit
  (``CHAT_GATEWAY_OUTBOUND_BUFFER``), but a few hundred sockets each just
  under it would still exhaust memory. Past the budget the sockets with the
  largest buffers — the slowest readers — are closed first (1013), until the
  rest fits.

The budget learns a socket's buffer size when it writes to it; buffers only
shrink behind its back (the client reads), so its running total is an upper
bound, made exact by a scan of every socket before anyone is cut.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Protocol


class ConnectionCaps:
    """Open sockets per client address and per gateway; 0 turns a cap off."""

    __slots__ = ("per_address", "total", "by_address", "count")

    def __init__(self, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        self.by_address: dict[str, int] = {}
        self.count = 0

    def open(self, address: str) -> str | None:
        """Count a new socket from ``address``; None, or why it is refused (not counted)."""
        if self.total and self.count >= self.total:
            return "gateway connection cap"
        held = self.by_address.get(address, 0)
        if self.per_address and held >= self.per_address:
            return "address connection cap"
        self.by_address[address] = held + 1
        self.count += 1
        return None

    def close(self, address: str) -> None:
        """A socket counted by :meth:`open` is gone."""
        held = self.by_address.get(address, 0) - 1
        if held > 0:
            self.by_address[address] = held
        else:
            self.by_address.pop(address, None)
        self.count -= 1


class Buffered(Hashable, Protocol):
    """A socket as the budget sees it (:class:`~.connection.Connection`)."""

    @property
    def closed(self) -> bool: ...

    def buffered(self) -> int: ...

    def close_slow(self, why: str = ...) -> None: ...


class OutboundBudget:
    """The bytes buffered toward all sockets; ``limit`` 0 turns it off.

    ``rescan``: at most one full scan per that many seconds while the running
    total stays over the limit but the real one does not.
    """

    def __init__(self, limit: int, rescan: float = 0.1) -> None:
        self.limit = limit
        self.rescan = rescan
        self.sizes: dict[Buffered, int] = {}
        self.total = 0
        self._scan_after = 0.0

    def wrote(self, conn: Buffered, size: int, now: float | None = None) -> list[Buffered]:
        """``conn``'s buffer holds ``size`` bytes after a write; the sockets cut, if any."""
        sizes = self.sizes
        self.total += size - sizes.get(conn, 0)
        sizes[conn] = size
        if not self.limit or self.total <= self.limit:
            return []
        now = time.monotonic() if now is None else now
        if now < self._scan_after:
            return []
        self._scan_after = now + self.rescan
        return self.enforce()

    def remove(self, conn: Buffered) -> None:
        self.total -= self.sizes.pop(conn, 0)

    def enforce(self) -> list[Buffered]:
        """Scan every socket; past the limit close the largest buffers first until
        the rest fits. Sockets already closing no longer count (their buffers
        go within the slow-close deadline, and cutting others would not help)."""
        sizes: dict[Buffered, int] = {}
        for conn in self.sizes:
            if not conn.closed:
                sizes[conn] = conn.buffered()
        self.sizes = sizes
        self.total = sum(sizes.values())
        cut: list[Buffered] = []
        if self.limit and self.total > self.limit:
            for conn in sorted(sizes, key=sizes.__getitem__, reverse=True):
                if self.total <= self.limit:
                    break
                conn.close_slow("outbound budget")
                self.total -= sizes.pop(conn)
                cut.append(conn)
        return cut
