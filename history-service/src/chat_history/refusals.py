"""Audit lines for refusals, at most one per (action, key) per window.

Every refusal by a limit is counted (``chat_history_refused_total{reason}``);
its audit line (``chat_kit.logs.audit``) is written once per key (a user)
and window, the repeats only counted
(``chat_audit_suppressed_total``, chat_kit.audit), so a client hammering a limit
cannot flood the log.
"""

from __future__ import annotations

import logging
from typing import Any

from chat_kit.audit import AuditLimiter

from . import metrics

AUDIT_WINDOW = 60.0


class RefusalLog:
    def __init__(self, log: logging.Logger, window: float = AUDIT_WINDOW) -> None:
        self._log = log
        self._audits = AuditLimiter(window)

    def refused(self, reason: str, action: str, key: str, **fields: Any) -> None:
        metrics.REFUSED.labels(reason).inc()
        self._audits.audit(self._log, action, key, reason=reason, user=key, **fields)
