"""Error codes and WebSocket close codes of docs/protocol.md §3.2, §4 and §8.

Hierarchy::

    ChatError            any client-meaningful failure, carries a wire ``code``
      (no subclasses: the ``code`` is the type; build one with ``ChatError(code, msg)``)

Internal failures are never sent as text: callers log them and answer
``internal``.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}


class CloseCode(IntEnum):
    NORMAL = 1000
    POLICY = 1008
    TOO_LARGE = 1009
    INTERNAL = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    REPLACED = 4409


class ChatError(Exception):
    """A failure the client may see: its ``code`` is one of :class:`ErrorCode`."""

    def __init__(self, code: ErrorCode | str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else ErrorCode.INTERNAL
        self.message = message
        # Seconds until a retry may succeed (``rate_limited``): HTTP ``Retry-After``.
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"ChatError({self.code.value!r}, {self.message!r})"
