"""``@name`` in a message text: the names a ``send`` may mention (docs/protocol.md §3.3).

Pure parsing; which names are the room's members is history-service's to
say (``svc.rooms.resolve``), so a mention of a non-member, or of nobody,
is simply left out of the event's ``mentions``.

A mention is ``@`` followed by a username (``limits.USERNAME_PATTERN``) and
not preceded by a username character, so ``alice@example.org`` mentions
nobody. Usernames may end with ``.`` or ``-``, which also end sentences:
``@bob.`` yields both ``bob.`` and ``bob`` as candidates, and whichever
is a member counts. Names are compared case-insensitively (as usernames
are unique), each once, at most ``limits.MENTIONS_MAX`` distinct names per
message (the rest are ignored).
"""

from __future__ import annotations

import re

from . import limits

_MENTION = re.compile(r"(?<![A-Za-z0-9_.-])@([A-Za-z0-9_.-]{3,32})(?![A-Za-z0-9_.-])")


def may_mention(text: str) -> bool:
    """The cheap test a ``send`` pays: only a text with ``@`` can mention anyone."""
    return "@" in text


def mention_names(text: str) -> list[str]:
    """The candidate names mentioned in ``text``, lowercased, in order, each once."""
    if "@" not in text:
        return []
    names: dict[str, None] = {}
    for match in _MENTION.finditer(text):
        name = match.group(1).lower()
        for candidate in (name, name.rstrip(".-")):
            if len(candidate) >= 3:
                names.setdefault(candidate)
        if len(names) >= limits.MENTIONS_MAX:
            break
    return list(names)[:limits.MENTIONS_MAX]
