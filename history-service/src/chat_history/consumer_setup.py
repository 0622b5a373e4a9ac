"""The CHAT stream and our durable push consumer on it: names, config, creation.

JetStream pushes a chat stream to :func:`deliver_subject`; every instance
subscribes there in the queue group :data:`DELIVER_GROUP` (the consumer's
deliver group), so the server hands each message to one instance.
``max_ack_pending`` bounds the messages pushed but not yet acked, across all
instances: at that many the server stops pushing until acks arrive. Flow
control and idle heartbeats are on, as JetStream recommends for push
consumers. The stream is created when missing and otherwise only verified
(:func:`chat_kit.stream.ensure_chat_stream`), never updated here.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from chat_contract import subjects
from chat_kit.stream import StreamSettings, ensure_chat_stream, push_consumer_config
from chat_kit.stream import deliver_subject as stream_deliver_subject

DURABLE = "history-push"
# Where JetStream pushes the stream; every instance subscribes in DELIVER_GROUP.
# Not under chat.room.* (the stream's own subjects: that would form a cycle).
DELIVER_SUBJECT = "chat.deliver.history"
DELIVER_GROUP = "history"
# Time a delivered message may stay unacked before JetStream hands it to another
# instance: longer than any healthy batch, short enough to recover from a crash.
ACK_WAIT = 30.0
# Bound on messages pushed and not yet acked, all instances together: room for
# every instance's batches in flight; beyond it JetStream stops pushing.
MAX_ACK_PENDING = 20_000
IDLE_HEARTBEAT = 5.0


def deliver_subject(stream: str = subjects.CHAT_STREAM) -> str:
    """Where a chat stream pushes to us: one subject per partition stream."""
    return stream_deliver_subject(DELIVER_SUBJECT, stream)


def consumer_config(stream: str = subjects.CHAT_STREAM) -> ConsumerConfig:
    """Our durable on ``stream``, new: it starts at the stream's first message."""
    return push_consumer_config(
        stream, durable=DURABLE,
        description="history-service: stores every chat event in PostgreSQL",
        deliver_prefix=DELIVER_SUBJECT, group=DELIVER_GROUP, deliver_policy=DeliverPolicy.ALL,
        ack_wait=ACK_WAIT, max_ack_pending=MAX_ACK_PENDING, idle_heartbeat=IDLE_HEARTBEAT)


def updated_config(current: ConsumerConfig, stream: str) -> ConsumerConfig:
    """Our config for an existing durable: what JetStream cannot change stays as it is."""
    if not current.deliver_subject:
        raise RuntimeError(f"consumer {DURABLE!r} exists as a pull consumer; delete it")
    config = consumer_config(stream)
    config.deliver_policy = current.deliver_policy
    config.opt_start_seq = current.opt_start_seq
    config.opt_start_time = current.opt_start_time
    config.flow_control = current.flow_control
    config.idle_heartbeat = current.idle_heartbeat
    return config


async def ensure_consumer(js: JetStreamContext, settings: StreamSettings, stream: str) -> None:
    """Create the chat streams if missing (else verify them), then create our
    durable on ``stream`` or update it (a changed config, e.g. max_ack_pending,
    applies on restart)."""
    await ensure_chat_stream(js, settings)
    try:
        info = await js.consumer_info(stream, DURABLE)
    except NotFoundError:
        config = consumer_config(stream)
    else:
        config = updated_config(info.config, stream)
    await js.add_consumer(stream, config)


async def consumer_exists(js: JetStreamContext, stream: str) -> bool:
    try:
        await js.consumer_info(stream, DURABLE)
    except NotFoundError:
        return False
    return True
