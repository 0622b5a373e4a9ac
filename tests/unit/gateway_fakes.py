"""Stand-ins shared by the gateway's unit tests: a socket that records frames."""

from __future__ import annotations

from typing import cast

from chat_contract.events import Message, ServerEvent, User, decode_event
from chat_gateway.connection import Connection

ANN = User(id="u_ann", name="ann")
BOB = User(id="u_bob", name="bob")
EVE = User(id="u_eve", name="eve")


class Sock:
    """Stands in for a Connection where the room only writes frames."""

    def __init__(self, user: User, blocked: set[str] | None = None) -> None:
        self.user = user
        self.blocked: set[str] = blocked or set()
        self.rooms: set[str] = {"r"}
        self.frames: list[bytes] = []

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def events(self) -> list[ServerEvent]:
        return [decode_event(payload_of(f)) for f in self.frames]

    def chain(self) -> list[tuple[int, int]]:
        return [(e.seq, e.prev_seq) for e in self.events() if isinstance(e, Message)]


def payload_of(frame: bytes) -> bytes:
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else (4 if n == 126 else 10):]


def conn(sock: Sock) -> Connection:
    return cast(Connection, sock)
