"""Waiting in tests, the same way in every layer (unit, integration, e2e).

- ``TIME_FACTOR``: the one knob for slow machines. ``CHAT_TEST_TIME_FACTOR``
  (default 1) multiplies every deadline and every quiet window of the tests;
  read here only, so a test never has a private copy.
- ``eventually`` / ``wait_until``: poll for a condition until a deadline
  instead of sleeping a fixed time before an assertion; the deadline is
  scaled, so pass the time the condition takes on a normal machine, with a
  margin.
- ``QUIET``: how long a negative check listens to prove that nothing arrives
  (an event that would arrive comes within milliseconds on loopback).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIME_FACTOR = float(os.environ.get("CHAT_TEST_TIME_FACTOR", "1"))
if TIME_FACTOR <= 0:
    raise ValueError(f"CHAT_TEST_TIME_FACTOR must be > 0, not {TIME_FACTOR}")

QUIET = 0.5 * TIME_FACTOR


def scaled(seconds: float) -> float:
    """``seconds`` times ``CHAT_TEST_TIME_FACTOR``: a deadline for this machine."""
    return seconds * TIME_FACTOR


async def eventually(check: Callable[[], T | Awaitable[T]], timeout: float = 10.0,
                     what: str = "the condition", interval: float = 0.02,
                     retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``check`` (sync or async) until it returns something truthy; return it.

    ``timeout`` is scaled by the time factor. An exception in ``retry_on``
    counts as "not yet"; at the deadline an ``AssertionError`` names ``what``
    and the last falsy value or exception.
    """
    deadline = time.monotonic() + scaled(timeout)
    last: object = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}"
                                 f" (last: {last!r})")
        await asyncio.sleep(interval)


def wait_until(check: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
               interval: float = 0.05) -> T:
    """:func:`eventually` for synchronous code (fixtures, threads): blocks while polling."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}"
                                 f" (last: {value!r})")
        time.sleep(interval)
