"""Audit lines for refusals, at most one per (action, key) per window.

Every refusal by a limit is counted (``chat_history_refused_total{reason}``);
its audit line (``chat_kit.logs.audit``) is written once per key (a user)
and window, the repeats only counted
(``chat_history_audit_suppressed_total``), so a client hammering a limit
cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from chat_kit.logs import audit

from . import metrics

AUDIT_WINDOW = 60.0
_MAX_KEYS = 10_000


class RefusalLog:
    def __init__(self, log: logging.Logger, window: float = AUDIT_WINDOW) -> None:
        self._log = log
        self._window = window
        self._last: dict[tuple[str, str], float] = {}

    def refused(self, reason: str, action: str, key: str, **fields: Any) -> None:
        metrics.REFUSED.labels(reason).inc()
        now = time.monotonic()
        last = self._last.get((action, key))
        if last is not None and now - last < self._window:
            metrics.AUDIT_SUPPRESSED.labels(action).inc()
            return
        if len(self._last) >= _MAX_KEYS:
            cutoff = now - self._window
            self._last = {k: t for k, t in self._last.items() if t > cutoff}
            if len(self._last) >= _MAX_KEYS:
                self._last.pop(next(iter(self._last)))
        self._last[(action, key)] = now
        audit(self._log, action, reason=reason, user=key, **fields)
