"""Room ids: one NATS subject token each, so the alphabet is closed (docs/protocol.md §3.3)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from .limits import ROOM_ID_MAX

_ALPHABET = r"[A-Za-z0-9_-]"
ROOM_ID_PATTERN = rf"^{_ALPHABET}{{1,{ROOM_ID_MAX}}}$"
_ROOM_ID_RE = re.compile(ROOM_ID_PATTERN)

# Used as a field type: msgspec rejects bad ids while decoding a frame. \Z, not
# $: msgspec searches with `re`, where "$" also matches before a final newline.
RoomId = Annotated[str, msgspec.Meta(pattern=rf"\A{_ALPHABET}{{1,{ROOM_ID_MAX}}}\Z")]


def is_valid_room_id(room: str) -> bool:
    # fullmatch: "$" alone would accept a trailing newline
    return _ROOM_ID_RE.fullmatch(room) is not None
