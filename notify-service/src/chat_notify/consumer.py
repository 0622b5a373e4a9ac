"""The durable push consumer ``notify-push`` of one chat stream (partition).

JetStream pushes the stream to :func:`deliver_subject`; every instance
subscribes there in the queue group ``notify`` (the consumer's deliver
group), so each record goes to one instance. A new durable starts at the
stream's *new* messages (``DeliverPolicy.NEW``): deploying the service
notifies nobody about last week.

Each record is handled in a task of its own, at most ``CHAT_NOTIFY_CONCURRENCY``
at once per instance (the rest wait for a slot); ``max_ack_pending``
(``CHAT_NOTIFY_MAX_ACK_PENDING``) bounds the records pushed and unacked over
all instances, so the server stops pushing before memory grows. A record is
acked only once every notification of it is delivered or dead-lettered;
while it is being worked on, its ack deadline is pushed back ("in progress")
every third of :data:`ACK_WAIT`. A service or the database away → ``nak``
with a growing delay (redelivered later); a payload that is no chat record
→ ``term``. Stop: no new deliveries, :data:`STOP_BUDGET` seconds for those
being handled, the rest handed back (``nak``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from chat_contract import subjects
from chat_contract.errors import ChatError
from chat_kit import bus
from chat_kit.db import DB_UNAVAILABLE
from chat_kit.logs import event
from chat_kit.stream import StreamSettings, push_consumer_config
from chat_kit.stream import deliver_subject as stream_deliver_subject

from . import metrics
from .notifier import BadRecord

log = logging.getLogger("chat_notify.consumer")

DURABLE = "notify-push"
DELIVER_SUBJECT = "chat.deliver.notify"  # not under chat.room.* (the stream's own)
DELIVER_GROUP = "notify"
# Unacked this long → redelivered to another instance; "in progress" is sent
# every third of it while a record is being worked on, however long its retries.
ACK_WAIT = 30.0
IDLE_HEARTBEAT = 5.0
CHECK_INTERVAL = 5.0
STOP_BUDGET = 3.0
# nak delays of a record whose handling failed (a service away): by delivery count.
NAK_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
# An unexpected error (a bug) this many deliveries in a row → the record is dropped.
MAX_FAILED_DELIVERIES = 10
_STATUS = "Status"
_CONSUMER_STALLED = "Nats-Consumer-Stalled"

Handler = Callable[[bytes, str, int, float | None], Awaitable[object]]


def deliver_subject(stream: str = subjects.CHAT_STREAM) -> str:
    return stream_deliver_subject(DELIVER_SUBJECT, stream)


def consumer_config(stream: str, max_ack_pending: int) -> ConsumerConfig:
    return push_consumer_config(
        stream, durable=DURABLE,
        description="notify-service: webhooks for DMs and mentions to offline users",
        deliver_prefix=DELIVER_SUBJECT, group=DELIVER_GROUP, deliver_policy=DeliverPolicy.NEW,
        ack_wait=ACK_WAIT, max_ack_pending=max_ack_pending, idle_heartbeat=IDLE_HEARTBEAT)


async def ensure_consumer(js: JetStreamContext, stream: str, max_ack_pending: int) -> None:
    """Create our durable on ``stream``, or update it (what JetStream cannot
    change is kept). The stream itself is history-service's to create."""
    config = consumer_config(stream, max_ack_pending)
    try:
        info = await js.consumer_info(stream, DURABLE)
    except NotFoundError:
        pass
    else:
        current = info.config
        if not current.deliver_subject:
            raise RuntimeError(f"consumer {DURABLE!r} exists as a pull consumer; delete it")
        config.deliver_policy = current.deliver_policy
        config.opt_start_seq = current.opt_start_seq
        config.opt_start_time = current.opt_start_time
        config.flow_control = current.flow_control
        config.idle_heartbeat = current.idle_heartbeat
    await js.add_consumer(stream, config)


class NotifyConsumer:
    def __init__(self, nc: NATS, handler: Handler, *, stream: StreamSettings, name: str,
                 concurrency: int, max_ack_pending: int, timeout: float) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._handler = handler
        self._stream = stream
        self._name = name
        self._max_ack_pending = max_ack_pending
        self._slots = asyncio.Semaphore(concurrency)
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._setup: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failing = False
        self.handled = 0  # records acked by this instance (tests, operators)

    @property
    def name(self) -> str:
        return self._name

    def start(self) -> None:
        """Set the durable up and subscribe, retrying in the background until
        it works (the chat stream may not exist yet); then watch it."""
        self._setup = asyncio.create_task(self._run(), name=f"notify-consumer-{self._name}")

    def is_ready(self) -> bool:
        return self._sub is not None and not self._failing

    async def stop(self) -> None:
        self._stop.set()
        if self._setup is not None:
            self._setup.cancel()
            await asyncio.gather(self._setup, return_exceptions=True)
        sub, self._sub = self._sub, None
        if sub is not None:
            await bus.drain_or_unsubscribe(sub)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_BUDGET)
            for task in pending:
                task.cancel()  # each hands its record back
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)

    # --- setup ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.1
        while self._sub is None:
            try:
                await ensure_consumer(self._js, self._name, self._max_ack_pending)
                self._sub = await self._nc.subscribe(
                    deliver_subject(self._name), queue=DELIVER_GROUP, cb=self._on_msg,
                    pending_msgs_limit=4 * self._max_ack_pending,
                    pending_bytes_limit=256 * 1024 * 1024)
            except Exception as exc:
                self._trouble("consumer setup failed", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._recovered()
        event(log, "consuming", stream=self._name, durable=DURABLE)
        while not self._stop.is_set():
            await asyncio.sleep(CHECK_INTERVAL)
            try:  # a push consumer that disappeared is silent: look for it now and then
                await self._js.consumer_info(self._name, DURABLE)
            except NotFoundError as exc:
                self._trouble("consumer missing, re-creating it", exc)
                with contextlib.suppress(Exception):
                    await ensure_consumer(self._js, self._name, self._max_ack_pending)
                continue
            except Exception as exc:
                self._trouble("consumer check failed", exc)
                continue
            self._recovered()

    def _trouble(self, what: str, exc: BaseException) -> None:
        if not self._failing:
            event(log, what, logging.WARNING, stream=self._name, error=repr(exc))
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            event(log, "consumer recovered", stream=self._name)
        self._failing = False

    # --- deliveries -----------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply or not msg.reply.startswith("$JS.ACK."):
            await self._control(msg)
            return
        task = asyncio.create_task(self._work(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _control(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if msg.data or headers.get(_STATUS) != "100":
            return  # not from JetStream: nothing to answer
        reply = msg.reply or headers.get(_CONSUMER_STALLED)
        if reply:
            with contextlib.suppress(Exception):
                await self._nc.publish(reply)

    async def _progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(ACK_WAIT / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _work(self, msg: Msg) -> None:
        meta = msg.metadata
        delivered = meta.num_delivered or 1
        stored_at = meta.timestamp.timestamp() if meta.timestamp is not None else None
        room = subjects.room_of_subject(msg.subject)
        ticker = asyncio.create_task(self._progress(msg))
        try:
            async with self._slots:
                await self._handler(msg.data, room, meta.sequence.stream, stored_at)
            await msg.ack()
            self.handled += 1
            metrics.RECORDS.labels("done").inc()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except BadRecord as exc:
            metrics.RECORDS.labels("bad").inc()
            event(log, "not a chat record: dropped", logging.WARNING, subject=msg.subject,
                  error=str(exc))
            with contextlib.suppress(Exception):
                await msg.term()
        except Exception as exc:
            # A service or the database away: expected, retried without end
            # (CHAT_NOTIFY_MAX_AGE drops what got too old meanwhile).
            expected = isinstance(exc, (ChatError, *DB_UNAVAILABLE))
            if not expected and delivered >= MAX_FAILED_DELIVERIES:
                metrics.RECORDS.labels("dropped").inc()
                log.exception("record failed too often: dropped",
                              extra={"fields": {"subject": msg.subject, "delivered": delivered}})
                with contextlib.suppress(Exception):
                    await msg.term()
                return
            metrics.RECORDS.labels("retried").inc()
            if expected:
                event(log, "record handed back", logging.WARNING, subject=msg.subject,
                      delivered=delivered, error=repr(exc))
            else:
                log.exception("record failed", extra={"fields": {"subject": msg.subject}})
            with contextlib.suppress(Exception):
                await msg.nak(delay=NAK_DELAYS[min(delivered, len(NAK_DELAYS)) - 1])
        finally:
            ticker.cancel()

