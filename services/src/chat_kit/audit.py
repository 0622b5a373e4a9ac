"""Audit lines a client cannot flood: at most one per (action, key) per window.

Every refusal by a limit (a rate, a cap, a budget cut, a throttled login) is
a security event worth a line (:func:`chat_kit.logs.audit`), but a client
that hammers one limit must not turn the log into its amplifier. A line is
written for the first refusal of a key (a user, an address) in each window;
the rest are counted in ``chat_audit_suppressed_total{action}``. One
implementation for every deployable (gateway, auth, history).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter

from .logs import audit

AUDIT_SUPPRESSED = Counter("chat_audit_suppressed_total",
                           "Audit lines left out (one per key per window)", ["action"])


class AuditLimiter:
    """``audit`` once per (action, key) per ``window`` seconds; bounded memory."""

    __slots__ = ("window", "max_keys", "_last")

    def __init__(self, window: float = 60.0, max_keys: int = 10_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, action: str, key: str, now: float | None = None) -> bool:
        """True if a line for ``(action, key)`` may be written now (and note it)."""
        now = time.monotonic() if now is None else now
        last = self._last.get((action, key))
        if last is not None and now - last < self.window:
            AUDIT_SUPPRESSED.labels(action).inc()
            return False
        if len(self._last) >= self.max_keys:
            cutoff = now - self.window
            self._last = {k: t for k, t in self._last.items() if t >= cutoff}
            if len(self._last) >= self.max_keys:
                self._last.clear()  # a spray of distinct keys: forget, stay bounded
        self._last[(action, key)] = now
        return True

    def audit(self, logger: logging.Logger, action: str, key: str, now: float | None = None,
              **fields: Any) -> None:
        """An audit line for ``action`` unless one for ``key`` was written within the window."""
        if self.allow(action, key, now):
            audit(logger, action, **fields)
