"""Exports the CHAT stream's and the history consumer's state as gauges.

history-service owns the stream, so it watches it: every
:data:`POLL_INTERVAL` seconds one stream info and one consumer info request
(plus one direct get while something is unstored) feed the gauges of
:mod:`.metrics`. The alert rules (deploy/prometheus/alerts.yml) read them:
storage near ``max_bytes``, the consumer falling behind (its lag approaching
``max_age`` means messages would age out of the stream before being stored),
and the stream's cluster: a follower offline or not current is how a NATS
node or route being down shows from here.

Consumer lag is defined as the age of the oldest stream message above the
consumer's ack floor, i.e. the oldest message not yet stored (0 when nothing
is pending or awaiting its ack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StreamInfo
from nats.js.errors import NotFoundError

from chat_contract import subjects
from chat_kit.logs import event
from chat_kit.stream import StreamSettings

from . import metrics
from .consumer_setup import DURABLE

log = logging.getLogger("chat_history.stream_monitor")

POLL_INTERVAL = 5.0
STATES = ("current", "lagging", "offline")


def export_stream(info: StreamInfo) -> None:
    """Stream size, limits, sequences and cluster state into the gauges."""
    name = info.config.name or subjects.CHAT_STREAM
    state, config, cluster = info.state, info.config, info.cluster
    metrics.STREAM_MESSAGES.labels(name).set(state.messages)
    metrics.STREAM_BYTES.labels(name).set(state.bytes)
    metrics.STREAM_FIRST_SEQ.labels(name).set(state.first_seq)
    metrics.STREAM_LAST_SEQ.labels(name).set(state.last_seq)
    metrics.STREAM_MAX_BYTES.labels(name).set(max(0, config.max_bytes or 0))
    metrics.STREAM_MAX_AGE.labels(name).set(max(0.0, config.max_age or 0.0))
    metrics.STREAM_REPLICAS.labels(name).set(config.num_replicas or 1)
    metrics.STREAM_LEADER.labels(name).set(1 if cluster is not None and cluster.leader else 0)
    counts = dict.fromkeys(STATES, 0)
    for peer in (cluster.replicas or []) if cluster is not None else []:
        counts["offline" if peer.offline else "current" if peer.current else "lagging"] += 1
    for label, n in counts.items():
        metrics.STREAM_PEERS.labels(name, label).set(n)


async def age_from(js: JetStreamContext, stream: str, seq: int,
                   subject: str = subjects.CHAT_SUBJECTS) -> float:
    """Seconds since the first stream message at or after ``seq`` was stored
    (0: none); ``subject`` is the stream's subject filter."""
    try:
        oldest = await js.get_msg(stream, seq=max(1, seq), subject=subject,
                                  next=True, direct=True)
    except NotFoundError:
        return 0.0
    if oldest.time is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - oldest.time).total_seconds())


async def consumer_lag(js: JetStreamContext, stream: str, info: ConsumerInfo,
                       subject: str = subjects.CHAT_SUBJECTS) -> float:
    """Seconds since the oldest message not yet stored was stored in the stream."""
    if not info.num_pending and not info.num_ack_pending:
        return 0.0
    floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    return await age_from(js, stream, floor + 1, subject)


class StreamMonitor:
    """Polls while running; one per history-service process."""

    def __init__(self, js: JetStreamContext, interval: float = POLL_INTERVAL,
                 layout: StreamSettings | None = None) -> None:
        self._js = js
        self._layout = layout or StreamSettings()
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="history-stream-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll(self) -> None:
        """One round: every stream's info and our consumer's on it."""
        for name in self._layout.names():
            subject = self._layout.stream_subjects(name)
            stream = await self._js.stream_info(name)
            export_stream(stream)
            window = await age_from(self._js, name, stream.state.first_seq, subject)
            metrics.STREAM_WINDOW.labels(name).set(window if stream.state.messages else 0.0)
            info = await self._js.consumer_info(name, DURABLE)
            metrics.CONSUMER_PENDING.labels(name).set(info.num_pending or 0)
            metrics.CONSUMER_ACK_PENDING.labels(name).set(info.num_ack_pending or 0)
            metrics.CONSUMER_LAG.labels(name).set(
                await consumer_lag(self._js, name, info, subject))

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception as exc:  # NATS away, no quorum: the alerts see stale gauges
                metrics.MONITOR_ERRORS.inc()
                if not self._failing:
                    event(log, "stream monitor poll failed", logging.WARNING, error=repr(exc))
                self._failing = True
            else:
                if self._failing:
                    event(log, "stream monitor poll recovered")
                self._failing = False
            await asyncio.sleep(self._interval)
