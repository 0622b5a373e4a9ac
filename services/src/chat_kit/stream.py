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

Partitions later. Every question "which stream (and subject) holds room X"
goes through :func:`stream_for_room` and :func:`stream_names`; several
streams with a room mapped to one by a stable hash would change those two
and :func:`chat_stream_config`'s ``name``/subjects, not their callers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RePublish, RetentionPolicy, StorageType, StreamConfig
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
# The 2-minute ``client_msg_id`` idempotency window (PROTOCOL.md §3.5.1).
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
    max_bytes: int = DEFAULT_MAX_BYTES  # 0 = no size limit

    @classmethod
    def from_env(cls) -> StreamSettings:
        return cls(
            replicas=stream_replicas(),
            max_age=env_float("CHAT_STREAM_MAX_AGE", DEFAULT_MAX_AGE),
            max_bytes=env_int("CHAT_STREAM_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=0),
        )


def stream_names() -> list[str]:
    """Every stream holding chat events (one today)."""
    return [subjects.CHAT_STREAM]


def stream_for_room(room: str) -> str:
    """The stream holding ``room``'s events (its subject: ``subjects.room_subject``)."""
    del room  # one stream today; partitions would hash the room id here
    return subjects.CHAT_STREAM


def chat_stream_config(settings: StreamSettings | None = None) -> StreamConfig:
    """The CHAT stream: stores every chat event and republishes it live.

    RePublish adds ``Nats-Sequence`` (our ``seq``) and ``Nats-Last-Sequence``
    (the previous sequence on the same room subject: our ``prev_seq``).
    """
    s = settings or StreamSettings()
    return StreamConfig(
        name=subjects.CHAT_STREAM,
        subjects=[subjects.CHAT_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        # JetStream refuses a duplicate window longer than max_age.
        duplicate_window=min(DUPLICATE_WINDOW, s.max_age) if s.max_age else DUPLICATE_WINDOW,
        max_age=s.max_age or None,
        max_bytes=s.max_bytes or -1,
        allow_direct=True,
        republish=RePublish(src=subjects.CHAT_SUBJECTS, dest=subjects.LIVE_DEST_TEMPLATE),
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
    """Create the CHAT stream if it is missing; otherwise verify it, never update it.

    Returns the differences found (empty when it matches or was just created);
    each one is logged once here and flagged in ``chat_stream_config_drift``.
    """
    wanted = chat_stream_config(settings)
    try:
        info = await js.stream_info(subjects.CHAT_STREAM)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            event(log, "CHAT stream created", stream=subjects.CHAT_STREAM,
                  replicas=wanted.num_replicas, max_age=wanted.max_age,
                  max_bytes=wanted.max_bytes)
            _flag({})
            return {}
        except BadRequestError:
            info = await js.stream_info(subjects.CHAT_STREAM)  # created meanwhile
    diff = differences(info.config, wanted)
    _flag(diff)
    if diff:
        event(log, "CHAT stream differs from the configured settings; left as it is "
              "(chat-admin stream apply changes it)", logging.WARNING,
              stream=subjects.CHAT_STREAM, differences=diff)
    return diff


def _flag(diff: dict[str, dict[str, Any]]) -> None:
    for field in MANAGED_FIELDS:
        CONFIG_DRIFT.labels(field).set(1 if field in diff else 0)


async def stream_exists(js: JetStreamContext) -> bool:
    """True if the CHAT stream exists (a stream info request, nothing more)."""
    try:
        await js.stream_info(subjects.CHAT_STREAM)
    except NotFoundError:
        return False
    return True


async def first_seq(js: JetStreamContext, stream: str = subjects.CHAT_STREAM) -> int:
    """The oldest sequence the stream still holds: everything below has aged
    out or was erased. Readers go to history-service for those."""
    info = await js.stream_info(stream)
    return int(info.state.first_seq)
