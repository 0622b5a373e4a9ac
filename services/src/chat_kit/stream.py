"""The CHAT stream: its configuration, where a room lives, create-or-verify at start.

The stream is a window, not the archive: PostgreSQL (history-service) keeps
every message for good, the stream keeps the last ``CHAT_STREAM_MAX_AGE``
seconds or ``CHAT_STREAM_MAX_BYTES`` bytes, whichever is reached first, and
drops the oldest messages beyond that (``discard: old``: a full stream never
refuses a send). Readers of the stream fall back to history-service for what
has aged out (gateway gap repair, a join's last sequence, the stored message
of a duplicate send).

Limits retention drops old messages whether or not history-service stored
them: if it lags by more than the window, those messages are lost. That is
why history-service exports its lag (``chat_history_consumer_lag_seconds``)
and the alerts fire long before the window is reached (deploy/prometheus).

Who manages the stream. Only history-service creates it, and only when it is
missing; otherwise start-up *verifies* it: a difference from the configured
settings (replicas, retention, subjects, republish, duplicate window) is
logged and shown in ``chat_stream_config_drift{field}``, and left alone, so a
restart never lowers R3 to R1 nor undoes an operator's retention edit. The
stream changes only through ``chat-admin stream apply`` (:mod:`chat_kit.admin`).
Gateways only look the stream up (``$JS.API.STREAM.INFO.CHAT``).

Partitions. One stream has one leader node that takes every message of
every room; ``CHAT_STREAM_PARTITIONS=P`` (> 1) spreads rooms over P streams
``CHAT_0`` … ``CHAT_<P-1>`` whose leaders JetStream places on different
nodes. Clients keep publishing on ``chat.room.<room>``; the NATS server's
subject mapping (:func:`subject_mapping`, in every server's config) rewrites
that to ``chat.part.<p>.<room>`` with ``p = partition(P, room)`` — FNV-1a of
the room id modulo P — and :func:`partition_of` computes the same hash, so
readers know which stream (and stored subject) holds a room without asking.
Each partition republishes on ``chat.live.<room>`` as before; a room's
``seq``/``prev_seq`` are its partition's sequences, still per room (they come
per subject). P=1 (the default) is the single ``CHAT`` stream on
``chat.room.*`` with no mapping at all. P is fixed for a deployment's life:
changing it moves rooms to other streams, whose sequences start elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from prometheus_client import Gauge

from chat_contract import subjects

from .logs import event
from .settings import env_float, env_int, stream_replicas

log = logging.getLogger("chat_kit.stream")

# Defaults: 7 days covers a history-service (or database) outage over a long
# weekend with room to spare; 1 GiB is ~2.5 million messages of ~400 bytes,
# and with R3 one such copy per node, well inside a 9 GB JetStream store
# next to the presence buckets. Whichever limit is reached first applies.
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES = 1 << 30
# The 2-minute ``client_msg_id`` idempotency window (docs/protocol.md §3.3).
DUPLICATE_WINDOW = 120.0

CONFIG_DRIFT = Gauge(
    "chat_stream_config_drift",
    "1 while the live CHAT stream differs from this process's settings in this field "
    "(left alone; `chat-admin stream apply` changes it)",
    ["field"],
)


@dataclass(frozen=True)
class StreamSettings:
    """The CHAT stream as configured (README "Configuration")."""

    replicas: int = 1
    max_age: float = DEFAULT_MAX_AGE  # seconds; 0 = no age limit
    max_bytes: int = DEFAULT_MAX_BYTES  # 0 = no size limit (per partition)
    partitions: int = 1

    @classmethod
    def from_env(cls) -> StreamSettings:
        return cls(
            replicas=stream_replicas(),
            max_age=env_float("CHAT_STREAM_MAX_AGE", DEFAULT_MAX_AGE),
            max_bytes=env_int("CHAT_STREAM_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=0),
            partitions=env_int("CHAT_STREAM_PARTITIONS", 1, minimum=1),
        )

    @property
    def partitioned(self) -> bool:
        return self.partitions > 1

    def names(self) -> list[str]:
        """Every stream holding chat events."""
        if not self.partitioned:
            return [subjects.CHAT_STREAM]
        return [partition_stream(p) for p in range(self.partitions)]

    def stream_for_room(self, room: str) -> str:
        """The stream holding ``room``'s events."""
        if not self.partitioned:
            return subjects.CHAT_STREAM
        return partition_stream(partition_of(room, self.partitions))

    def stored_subject(self, room: str) -> str:
        """The subject ``room``'s events are stored under (after the server's mapping)."""
        if not self.partitioned:
            return subjects.room_subject(room)
        return partition_subject(partition_of(room, self.partitions), room)

    def stream_subjects(self, name: str) -> str:
        """The subject filter of one of :meth:`names`."""
        if not self.partitioned:
            return subjects.CHAT_SUBJECTS
        return f"{PARTITION_PREFIX}.{name.rsplit('_', 1)[1]}.*"


# Partitioned layout: the server maps chat.room.<room> to chat.part.<p>.<room>.
PARTITION_PREFIX = "chat.part"


def partition_of(room: str, partitions: int) -> int:
    """The partition of ``room``: NATS's ``partition(P, 1)`` mapping function,
    FNV-1a (32 bit) of the room token modulo P (checked against the server in
    tests/integration/test_stream_partitions.py)."""
    h = 0x811C9DC5
    for byte in room.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def partition_stream(p: int) -> str:
    return f"{subjects.CHAT_STREAM}_{p}"


def partition_subject(p: int, room: str) -> str:
    return f"{PARTITION_PREFIX}.{p}.{room}"


def subject_mapping(partitions: int) -> dict[str, str]:
    """The account subject mapping every NATS server needs when partitioned
    (``mappings`` in the server config); empty for one stream."""
    if partitions <= 1:
        return {}
    dest = PARTITION_PREFIX + f".{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"
    return {subjects.CHAT_SUBJECTS: dest}


def chat_stream_config(settings: StreamSettings | None = None,
                       name: str = subjects.CHAT_STREAM) -> StreamConfig:
    """One chat stream (``name``, of ``settings.names()``): stores chat events
    and republishes each on ``chat.live.<room>``.

    RePublish adds ``Nats-Sequence`` (our ``seq``) and ``Nats-Last-Sequence``
    (the previous sequence on the same room subject: our ``prev_seq``).
    """
    s = settings or StreamSettings()
    filter_subject = s.stream_subjects(name)
    # chat.room.* → chat.live.{{wildcard(1)}}; chat.part.<p>.* → the same token.
    return StreamConfig(
        name=name,
        subjects=[filter_subject],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        # JetStream refuses a duplicate window longer than max_age.
        duplicate_window=min(DUPLICATE_WINDOW, s.max_age) if s.max_age else DUPLICATE_WINDOW,
        max_age=s.max_age or None,
        max_bytes=s.max_bytes or -1,
        allow_direct=True,
        republish=RePublish(src=filter_subject, dest=subjects.LIVE_DEST_TEMPLATE),
    )


def _norm(field: str, value: Any) -> Any:
    """A config value as comparable: unset, 0 and -1 all mean "no limit"."""
    if field in ("max_age", "max_bytes"):
        return 0 if value is None or value <= 0 else value
    if field == "republish":
        if value is None:
            return None
        return (value.src, value.dest, bool(value.headers_only))
    if field == "subjects":
        return sorted(value or [])
    if field in ("retention", "discard", "storage"):
        return getattr(value, "value", value)
    return value


# The fields start-up verifies and ``chat-admin stream apply`` sets.
MANAGED_FIELDS = ("num_replicas", "max_age", "max_bytes", "subjects", "republish",
                  "duplicate_window", "discard", "retention", "storage", "allow_direct")


def differences(live: StreamConfig, wanted: StreamConfig) -> dict[str, dict[str, Any]]:
    """``{field: {"live": …, "configured": …}}`` for every managed field that differs."""
    diff: dict[str, dict[str, Any]] = {}
    for field in MANAGED_FIELDS:
        have, want = _norm(field, getattr(live, field)), _norm(field, getattr(wanted, field))
        if have != want:
            diff[field] = {"live": have, "configured": want}
    return diff


async def ensure_chat_stream(js: JetStreamContext,
                             settings: StreamSettings | None = None) -> dict[str, dict[str, Any]]:
    """Create each chat stream that is missing; verify the others, never update them.

    Returns the differences found (``{field: …}``, over all partitions; empty
    when they match or were just created); each stream's are logged once here
    and flagged in ``chat_stream_config_drift``.
    """
    s = settings or StreamSettings()
    found: dict[str, dict[str, Any]] = {}
    for name in s.names():
        found.update(await _ensure_one(js, chat_stream_config(s, name)))
    _flag(found)
    return found


async def _ensure_one(js: JetStreamContext, wanted: StreamConfig) -> dict[str, dict[str, Any]]:
    name = wanted.name or subjects.CHAT_STREAM
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            event(log, "chat stream created", stream=name,
                  replicas=wanted.num_replicas, max_age=wanted.max_age,
                  max_bytes=wanted.max_bytes)
            return {}
        except BadRequestError:
            info = await js.stream_info(name)  # created meanwhile
    diff = differences(info.config, wanted)
    if diff:
        event(log, "chat stream differs from the configured settings; left as it is "
              "(chat-admin stream apply changes it)", logging.WARNING,
              stream=name, differences=diff)
    return diff


def _flag(diff: dict[str, dict[str, Any]]) -> None:
    for field in MANAGED_FIELDS:
        CONFIG_DRIFT.labels(field).set(1 if field in diff else 0)


async def stream_exists(js: JetStreamContext, settings: StreamSettings | None = None) -> bool:
    """True if every chat stream exists (stream info requests, nothing more)."""
    try:
        for name in (settings or StreamSettings()).names():
            await js.stream_info(name)
    except NotFoundError:
        return False
    return True


async def first_seq(js: JetStreamContext, stream: str = subjects.CHAT_STREAM) -> int:
    """The oldest sequence the stream still holds: everything below has aged
    out or was erased. Readers go to history-service for those."""
    info = await js.stream_info(stream)
    return int(info.state.first_seq)


# --- durable push consumers of the chat streams (history, notify) -----------


def deliver_subject(prefix: str, stream: str = subjects.CHAT_STREAM) -> str:
    """Where a chat stream pushes to a service's durable: ``prefix`` for the
    one stream, ``prefix.<stream>`` for each partition stream."""
    return prefix if stream == subjects.CHAT_STREAM else f"{prefix}.{stream}"


def push_consumer_config(stream: str, *, durable: str, description: str, deliver_prefix: str,
                         group: str, deliver_policy: DeliverPolicy, ack_wait: float,
                         max_ack_pending: int, idle_heartbeat: float) -> ConsumerConfig:
    """A service's durable push consumer on ``stream``: a deliver group so its
    replicas share the messages, explicit acks, flow control and heartbeats."""
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        description=description,
        deliver_subject=deliver_subject(deliver_prefix, stream),
        deliver_group=group,
        deliver_policy=deliver_policy,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        flow_control=True,
        idle_heartbeat=idle_heartbeat,
    )
