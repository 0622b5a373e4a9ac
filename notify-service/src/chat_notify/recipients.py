"""Who is notified of a chat record, and why; without I/O (README "Who is notified").

A new message (``kind`` "message"; edits and deletes notify nobody) notifies

* in a direct-message room (id ``dm-…``): every member but the sender (``dm``);
* anywhere: every user in the record's ``mentions`` but the sender (``mention``;
  a mention in a DM is a ``mention``);

each at most once, and only if the user's level in the room lets it through:
``none`` silences the room, ``mentions`` lets mentions through, ``all``
lets every notification through (DMs and mentions; group rooms have no
per-message notification, so there ``all`` = ``mentions``). A user who never
set a level has the default: ``all`` in DMs, ``mentions`` elsewhere.

Then (:mod:`.consumer`) users who blocked the sender and users online
anywhere are dropped too, with :func:`drop`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from chat_contract import subjects
from chat_contract.bus import ChatRecord, NotifyLevel
from chat_contract.events import User

Kind = Literal["dm", "mention"]
Skipped = list[tuple[str, str]]  # (user id, reason)


def is_dm(room: str) -> bool:
    return room.startswith(subjects.DM_PREFIX)


def default_level(room: str) -> NotifyLevel:
    return "all" if is_dm(room) else "mentions"


def wanted(kind: Kind, level: NotifyLevel) -> bool:
    """Does ``level`` let a notification of ``kind`` through?"""
    if level == "none":
        return False
    return level == "all" or kind == "mention"


def candidates(record: ChatRecord, room: str,
               dm_members: Iterable[User] = ()) -> dict[str, Kind]:
    """user id → why they would be notified (before levels, blocks and presence)."""
    if record.kind != "message":
        return {}
    sender = record.sender.id
    found: dict[str, Kind] = {}
    if is_dm(room):
        for member in dm_members:
            if member.id != sender:
                found[member.id] = "dm"
    for user in record.mentions:
        if user and user != sender:
            found[user] = "mention"
    return found


def by_level(found: Mapping[str, Kind], room: str,
             levels: Mapping[str, NotifyLevel]) -> tuple[dict[str, Kind], Skipped]:
    """Those whose level (stored, else the room's default) lets them through."""
    default = default_level(room)
    keep: dict[str, Kind] = {}
    skipped: Skipped = []
    for user, kind in found.items():
        if wanted(kind, levels.get(user, default)):
            keep[user] = kind
        else:
            skipped.append((user, "level"))
    return keep, skipped


def drop(found: Mapping[str, Kind], users: Iterable[str],
         reason: str) -> tuple[dict[str, Kind], Skipped]:
    """``found`` without ``users`` (blocked the sender, online…), and who was dropped."""
    gone = set(users)
    keep = {u: k for u, k in found.items() if u not in gone}
    return keep, [(u, reason) for u in found if u in gone]
