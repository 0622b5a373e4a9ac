"""Blocks at delivery, as pure logic: who skips an event, and the ``prev_seq``
a member must then see so that its chain stays unbroken.

A member that blocked an event's sender is delivered nothing of it. Its
client would then see the next event's ``prev_seq`` point at an event it
never got, and take it for a gap. So the first skip remembers the
``prev_seq`` that member would have been shown (its chain's last link), and
the next event delivered to it carries that ``prev_seq`` instead — a copy
encoded for that member alone. Only blockers pay; everyone else gets the
shared frame after one truthiness test.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")


class Chains(Generic[K]):
    """Per member (a connection in one room): the ``prev_seq`` owed after skips."""

    __slots__ = ("owed",)

    def __init__(self) -> None:
        self.owed: dict[K, int] = {}

    def __bool__(self) -> bool:
        return bool(self.owed)

    def skip(self, member: K, prev: int) -> None:
        """``member`` is not shown an event whose ``prev_seq`` is ``prev``.

        Only the first skip in a row counts: its ``prev`` is the last link the
        member holds (a real gap before it stays visible as one).
        """
        self.owed.setdefault(member, prev)

    def prev_for(self, member: K, prev: int) -> int | None:
        """The ``prev_seq`` ``member`` must be shown instead of ``prev`` for the
        event delivered now, or None when the shared frame is right."""
        owed = self.owed.pop(member, None)
        if owed is None or owed == prev:
            return None
        return owed

    def forget(self, member: K) -> None:
        self.owed.pop(member, None)
