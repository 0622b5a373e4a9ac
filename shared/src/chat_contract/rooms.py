"""Room ids: one NATS subject token each, so the alphabet is closed (docs/protocol.md §3.3)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from .limits import ROOM_ID_MAX

_ALPHABET = r"[A-Za-z0-9_-]"
# One pattern that Python and JavaScript read alike, as published in the specs
# (docs/openapi.json, docs/asyncapi.json). msgspec searches with `re`, where
# "$" also matches before a final newline: "(?!\n)" refuses that one place
# (in JavaScript, without the m flag, "$" is the end already and it is a no-op).
# Python-only syntax (\A, \Z, (?P<…>), inline flags) must not appear here.
ROOM_ID_PATTERN = rf"^{_ALPHABET}{{1,{ROOM_ID_MAX}}}$(?!\n)"
_ROOM_ID_RE = re.compile(ROOM_ID_PATTERN)

# Used as a field type: msgspec rejects bad ids while decoding a frame.
RoomId = Annotated[str, msgspec.Meta(pattern=ROOM_ID_PATTERN)]


def is_valid_room_id(room: str) -> bool:
    return _ROOM_ID_RE.fullmatch(room) is not None
