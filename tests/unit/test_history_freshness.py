"""Read-your-writes waits (chat_history.freshness): the ack-floor poller, without servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from chat_history.freshness import CommitTracker


class FakeJetStream:
    def __init__(self) -> None:
        self.floor = 0
        self.polls = 0

    async def consumer_info(self, stream: str, durable: str, timeout: float = 0) -> Any:
        self.polls += 1
        seq = type("Seq", (), {"stream_seq": self.floor})()
        return type("Info", (), {"ack_floor": seq, "num_pending": 1, "num_ack_pending": 1})()


async def until(check: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


async def test_a_nudge_polls_the_ack_floor_at_once() -> None:
    js = FakeJetStream()
    tracker = CommitTracker(js, interval=10.0)  # type: ignore[arg-type]
    try:
        waiting = asyncio.create_task(tracker.wait_for(5, timeout=5.0))
        await until(lambda: js.polls == 1)
        tracker.nudge()  # nothing stored yet: polls again, keeps waiting
        await until(lambda: js.polls == 2)
        assert not waiting.done()
        js.floor = 5
        t0 = time.monotonic()
        tracker.nudge()
        assert await waiting
        assert time.monotonic() - t0 < 1.0  # not the 10 s interval
        # No read waits: the poller ends, and a nudge starts nothing.
        poller = tracker._poller
        assert poller is not None
        await asyncio.wait_for(poller, 1.0)
        tracker.nudge()
        assert not tracker._nudged.is_set() and js.polls == 3
        assert await tracker.wait_for(5, timeout=0.01)  # at or below the floor: no poll
        assert js.polls == 3
    finally:
        await tracker.close()
