"""Event timestamps: RFC 3339 UTC with milliseconds (docs/protocol.md §3.4)."""

from __future__ import annotations

import time

_second = [-1, ""]


def now_rfc3339() -> str:
    """RFC 3339 UTC with milliseconds; the date part is formatted once a second."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"
