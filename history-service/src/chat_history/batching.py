"""When the writer takes its next batch: the linger policy, without I/O.

The caller passes the time (``now``, in seconds of any monotonic clock), so
the policy is unit-tested with a fake clock (test_history_batching).

A quiet stream is never kept waiting: a lone message, or a sender that waits
for each message to be stored before it sends the next, is written at once.
On a busy stream a batch gathers until ``size`` messages are there or
``linger`` has passed since the previous batch was taken, so the stream costs
one INSERT and one burst of acks per ``linger`` rather than per handful of
messages. Busy means: messages arrive at :data:`LINGER_MIN` or more per
``linger`` (a rate smoothed over the last few batches), and they keep coming
while the writer works (the last batch held several, or more were waiting
after it).
"""

from __future__ import annotations

# The writer lingers once the stream is busy enough that a linger gathers at
# least this many messages (80/s at the default 50 ms); below that rate each
# message is stored at once.
LINGER_MIN = 4
RATE_DECAY = 0.5  # per batch, for the arrival rate the policy estimates


class BatchPolicy:
    def __init__(self, size: int, linger: float, now: float) -> None:
        self.size = size  # most messages per batch (CHAT_HISTORY_BATCH)
        self.linger = linger  # CHAT_HISTORY_FETCH_WAIT
        self._started = now  # when the previous batch was taken
        # The arrival rate, as decaying sums of messages taken and time between
        # batches: one short gap between two lone messages does not make a
        # quiet stream look busy, a steady rate soon does.
        self._taken = 0.0
        self._elapsed = 1.0
        self._last = 0  # size of the batch last taken
        self.busy = False  # messages arrive fast enough to linger for

    def delay(self, now: float, waiting: int, closing: bool = False) -> float:
        """Seconds the next batch should still gather before it is taken (0: take it now).

        ``waiting`` is how many messages are buffered; ``closing``: the service
        stops, so store what is there without lingering.
        """
        if not self.busy or closing or waiting >= self.size:
            return 0.0
        return max(0.0, self._started + self.linger - now)

    def taken(self, now: float, n: int) -> None:
        """A batch of ``n`` messages was taken at ``now``."""
        self._taken = self._taken * RATE_DECAY + n
        self._elapsed = self._elapsed * RATE_DECAY + min(now - self._started, 1.0)
        self._started = now
        self._last = n

    def written(self, waiting: int) -> None:
        """That batch is written; ``waiting`` messages arrived meanwhile.

        Linger next time if a linger would gather several messages and messages
        do come while we work: not a lone sender waiting for each message to be
        stored before it sends the next, whom a linger would only slow down.
        """
        self.busy = (self._taken * self.linger >= LINGER_MIN * self._elapsed
                     and (self._last > 1 or waiting > 0))
