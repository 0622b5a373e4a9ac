"""The server API's keys (README "Server API"): read once from a secret file,
checked in constant time, each with its scopes.

``CHAT_SERVER_API_KEYS_FILE`` holds one key a line::

    # comment
    <key-id>:<secret>:<scope>,<scope>,...

A backend presents ``<key-id>:<secret>`` (HTTP ``Authorization: Bearer …``,
NATS header ``Chat-Api-Key``). The key id only picks the line; the secret is
compared with :func:`hmac.compare_digest` against the key's, or against a
dummy of the same length when the id is unknown, so neither an unknown id nor
a wrong secret answers faster. Both answer 401 ``unauthorized``; a valid key
without the route's scope answers 403 ``forbidden``.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from chat_contract.errors import ChatError, ErrorCode

# What a key may do; each server API method needs one (server_api.METHODS).
SCOPES = ("publish", "disconnect", "presence", "rooms", "users")
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECRET_MIN_CHARS = 16
# Keys longer than this are refused before any compare (no unbounded work).
PRESENTED_MAX_CHARS = 512


class KeysFileError(ValueError):
    """The keys file cannot be used (names the line, never a secret)."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    secret: bytes
    scopes: frozenset[str]

    def __repr__(self) -> str:  # never the secret
        return f"ApiKey({self.id!r}, scopes={sorted(self.scopes)})"


class ApiKeys:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = {k.id: k for k in keys}
        longest = max((len(k.secret) for k in keys), default=32)
        self._dummy = secrets.token_bytes(longest)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def parse(cls, text: str, source: str = "keys file") -> ApiKeys:
        keys: list[ApiKey] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            where = f"{source} line {number}"
            if len(parts) != 3:
                raise KeysFileError(f"{where}: expected <key-id>:<secret>:<scopes>")
            key_id, secret, scope_list = parts
            if not KEY_ID_PATTERN.fullmatch(key_id):
                raise KeysFileError(f"{where}: the key id must match {KEY_ID_PATTERN.pattern}")
            if len(secret) < SECRET_MIN_CHARS:
                raise KeysFileError(f"{where}: the secret needs {SECRET_MIN_CHARS}+ characters")
            scopes = frozenset(s.strip() for s in scope_list.split(",") if s.strip())
            unknown = scopes - set(SCOPES)
            if unknown or not scopes:
                raise KeysFileError(f"{where}: scopes must be among {','.join(SCOPES)}")
            if any(k.id == key_id for k in keys):
                raise KeysFileError(f"{where}: key id {key_id} appears twice")
            keys.append(ApiKey(key_id, secret.encode(), scopes))
        if not keys:
            raise KeysFileError(f"{source}: no keys")
        return cls(keys)

    @classmethod
    def load(cls, path: str) -> ApiKeys:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KeysFileError(f"CHAT_SERVER_API_KEYS_FILE: cannot read {path}: "
                                f"{exc.strerror}") from None
        return cls.parse(text, path)

    def authorize(self, presented: str | None, scope: str) -> ApiKey:
        """The key of ``presented`` if it has ``scope``; else 401 or 403."""
        if not presented:
            raise ChatError(ErrorCode.UNAUTHORIZED, "an API key is required")
        key_id, _, secret = presented[:PRESENTED_MAX_CHARS].partition(":")
        key = self._keys.get(key_id)
        expected = key.secret if key is not None else self._dummy
        same = hmac.compare_digest(secret.encode(), expected)
        if key is None or not same:
            raise ChatError(ErrorCode.UNAUTHORIZED, "invalid API key")
        if scope not in key.scopes:
            raise ChatError(ErrorCode.FORBIDDEN, f"this key has no {scope} scope")
        return key


def new_key_line(key_id: str, scopes: tuple[str, ...] = SCOPES) -> str:
    """A fresh line for a keys file (chat-stack writes one)."""
    return f"{key_id}:{secrets.token_urlsafe(32)}:{','.join(scopes)}"


def bearer(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` (or ``apikey <key>``) header."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "apikey"):
        return None
    return value.strip() or None
