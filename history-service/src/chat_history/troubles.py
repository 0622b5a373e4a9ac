"""What is failing now, by kind (``db``, ``nats``, ``erase``), logged once per
outage rather than once per retry; readiness reads it."""

from __future__ import annotations

import logging

from chat_kit.logs import event


class Troubles:
    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._failing: dict[str, str] = {}

    def failing(self, kind: str, what: str, exc: BaseException) -> None:
        if self._failing.get(kind) != what:
            self._failing[kind] = what
            event(self._log, what, logging.WARNING, error=repr(exc)[:300])

    def recovered(self, kind: str) -> None:
        what = self._failing.pop(kind, None)
        if what is not None:
            event(self._log, "recovered", previous=what)

    def kinds(self) -> set[str]:
        return set(self._failing)
