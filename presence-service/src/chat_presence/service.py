"""presence-service: live entries in JetStream KV in, ``join``/``leave`` out.

Every instance watches the live bucket (``PRESENCE``) and the announced
bucket (``PRESENCE_ANNOUNCED``) and keeps both in memory, so any instance
answers ``svc.presence.members`` (queue group) and can take over at once.

One instance at a time — the holder of the lease key in ``PRESENCE_LEADER``
(a bucket whose TTL is the lease; renewed with compare-and-set every third of
it) — publishes events. For each (room, user) whose live and announced views
differ it first writes the announcement with compare-and-set (``create`` for
a join, ``delete`` at the known revision for a leave), and only if that wins
publishes the event on ``presence.<room>``. So even two instances that both
believe they lead (a lease lost during a pause) cannot publish one transition
twice, and a restarted or new leader publishes exactly what changed while no
one led: the announced bucket is the memory of what clients were told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, BadRequestError, KeyDeletedError, NotFoundError
from nats.js.kv import KeyValue
from nats.micro.service import Service
from prometheus_client import Counter, Gauge
from starlette.routing import BaseRoute

from chat_contract import limits, rpc, subjects
from chat_contract.bus import (
    MembersReply,
    MembersRequest,
    OnlineReply,
    OnlineRequest,
    PresenceEntry,
    PresenceNotice,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_kit import bus
from chat_kit.logs import event
from chat_kit.runtime import Runtime

from .config import PresenceSettings
from .state import Pair, PresenceState, announced_key, split_announced_key, split_live_key

log = logging.getLogger("chat_presence")

EVENTS = Counter("chat_presence_events_total", "join/leave events published", ["event"])
LEADER = Gauge("chat_presence_leader", "1 while this instance holds the leader lease")
LIVE = Gauge("chat_presence_live_entries", "Live (room, user, connection) entries")
SERVICE = "presence"  # micro service name and queue group
LEADER_KEY = "leader"
ANNOUNCED_PREFIX = f"$KV.{subjects.PRESENCE_ANNOUNCED_BUCKET}."
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
CONCURRENCY = 64  # pairs settled at once (each one KV write and one publish)

_entry_decoder = msgspec.json.Decoder(PresenceEntry)
_user_decoder = msgspec.json.Decoder(User)
_DELETES = ("DEL", "PURGE")


def now_rfc3339() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Create the bucket, or bring an existing one to ``config``'s TTL (idempotent)."""
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        pass  # exists with another configuration (e.g. a changed TTL)
    info = await js.stream_info(f"KV_{config.bucket}")
    stream = info.config
    stream.max_age = config.ttl or None
    if config.limit_marker_ttl:
        stream.subject_delete_marker_ttl = config.limit_marker_ttl
    await js.update_stream(stream)
    return await js.key_value(config.bucket)


class PresenceService:
    def __init__(self, settings: PresenceSettings) -> None:
        self.settings = settings
        self.state = PresenceState()
        self.instance = "p_" + secrets.token_urlsafe(6)
        self.live_rev = 0  # last live-bucket revision folded into state
        self.lease_rev: int | None = None  # set while leading
        self._advanced = asyncio.Event()
        self._dirty: set[Pair] = set()
        self._wake = asyncio.Event()
        self._inflight: set[Pair] = set()
        self._again: set[Pair] = set()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._running: set[asyncio.Task[None]] = set()
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._svc: Service | None = None
        self._nc: NATS | None = None
        self._live: KeyValue | None = None
        self._announced: KeyValue | None = None
        self._leader: KeyValue | None = None
        self._ready = False

    @property
    def leading(self) -> bool:
        return self.lease_rev is not None

    # --- lifecycle ----------------------------------------------------------

    async def start(self, rt: Runtime) -> None:
        s = self.settings
        self._nc = rt.nc
        js = self._js = rt.nc.jetstream(timeout=s.common.request_timeout)
        replicas = s.common.stream_replicas
        self._live = await ensure_bucket(js, KeyValueConfig(
            bucket=subjects.PRESENCE_BUCKET, ttl=float(s.ttl), limit_marker_ttl=1.0,
            storage=StorageType.FILE, replicas=replicas, history=1))
        self._announced = await ensure_bucket(js, KeyValueConfig(
            bucket=subjects.PRESENCE_ANNOUNCED_BUCKET, storage=StorageType.FILE,
            replicas=replicas, history=1))
        self._leader = await ensure_bucket(js, KeyValueConfig(
            bucket=subjects.PRESENCE_LEADER_BUCKET, ttl=float(s.lease),
            storage=StorageType.FILE, replicas=replicas, history=1))
        # Both views complete before this instance answers or leads.
        initial = [asyncio.Event(), asyncio.Event()]
        self._tasks = [
            asyncio.create_task(self._watch(self._live, self._apply_live, initial[0])),
            asyncio.create_task(self._watch(self._announced, self._apply_announced, initial[1])),
        ]
        async def load() -> None:
            await asyncio.gather(*(e.wait() for e in initial))

        loaded: asyncio.Task[None] = asyncio.create_task(load())
        done, _ = await asyncio.wait({loaded, *self._tasks}, return_when=asyncio.FIRST_COMPLETED)
        if loaded not in done:  # a watcher died before loading: fail the start loudly
            loaded.cancel()
            for task in done:
                task.result()
            raise RuntimeError("presence watcher ended before loading")
        self._ready = True
        rt.checks.append(lambda: self._ready)
        self._tasks += [asyncio.create_task(self._lead()), asyncio.create_task(self._reconcile())]
        self._svc = await bus.start_service(rt.nc, SERVICE, "1.0.0", dict([
            bus.serves(SERVICE, rpc.PRESENCE_MEMBERS, self.members),
            bus.serves(SERVICE, rpc.PRESENCE_ONLINE, self.online),
        ]))
        event(log, "presence ready", instance=self.instance, ttl=s.ttl,
              entries=self.state.live_entries(), announced=len(self.state.announced))

    async def stop(self) -> None:
        self._ready = False
        if self._svc is not None:
            await self._svc.stop()
        for task in [*self._tasks, *self._running]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._running, return_exceptions=True)
        if self.lease_rev is not None and self._leader is not None:
            # Hand over at once instead of making the next leader wait out the lease.
            with contextlib.suppress(Exception):
                await self._leader.delete(LEADER_KEY, last=self.lease_rev)
            self.lease_rev = None
            LEADER.set(0)

    def routes(self) -> list[BaseRoute]:
        return []

    # --- queries ------------------------------------------------------------

    async def members(self, req: MembersRequest) -> MembersReply:
        if req.min_rev > self.live_rev:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.members_wait
            while req.min_rev > self.live_rev:
                left = deadline - loop.time()
                if left <= 0:
                    raise ChatError(ErrorCode.UNAVAILABLE, "presence is catching up")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._advanced.wait(), left)
        return MembersReply(members=self.state.members(req.room))

    async def online(self, req: OnlineRequest) -> OnlineReply:
        """Which of the asked users are present anywhere (notification-service's
        "offline" is the rest). What this instance has folded in so far."""
        if len(req.users) > limits.USERS_LOOKUP_MAX:
            raise ChatError(ErrorCode.BAD_REQUEST,
                            f"at most {limits.USERS_LOOKUP_MAX} users at once")
        state = self.state
        return OnlineReply(online=[u for u in dict.fromkeys(req.users) if state.online(u)])

    # --- watchers -----------------------------------------------------------

    async def _watch(self, kv: KeyValue, apply: Callable[[KeyValue.Entry], Pair | None],
                     initial: asyncio.Event) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    initial.set()
                    continue
                pair = apply(entry)
                if pair is not None and self.leading:
                    self._mark(pair)
                if kv is self._live:
                    self.live_rev = max(self.live_rev, entry.revision or 0)
                    self._advanced.set()
                    self._advanced = asyncio.Event()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply_live(self, entry: KeyValue.Entry) -> Pair | None:
        parts = split_live_key(entry.key)
        if parts is None:
            return None
        room, user_id, session = parts
        if entry.operation in _DELETES:
            pair = self.state.drop_live(room, user_id, session)
        else:
            try:
                value = _entry_decoder.decode(entry.value or b"")
            except msgspec.DecodeError:
                return None
            if value.user.id != user_id:
                return None
            pair = self.state.put_live(room, value.user, session)
        LIVE.set(self.state.live_entries())
        return pair

    def _apply_announced(self, entry: KeyValue.Entry) -> Pair | None:
        pair = split_announced_key(entry.key)
        if pair is None:
            return None
        if entry.operation in _DELETES:
            if pair not in self.state.announced and (
                    self.state.tombstones.get(pair) == entry.revision):
                return None  # the echo of our own leave
            self.state.drop_announced(pair, entry.revision or 0)
        else:
            try:
                user = _user_decoder.decode(entry.value or b"")
            except msgspec.DecodeError:
                return None
            if self.state.announced.get(pair, (0, None))[0] == entry.revision:
                return None  # the echo of our own announcement
            self.state.set_announced(pair, entry.revision or 0, user)
        return pair

    # --- leading ------------------------------------------------------------

    async def _lead(self) -> None:
        assert self._leader is not None
        kv = self._leader
        period = max(0.2, self.settings.lease / 3)
        me = self.instance.encode()
        while True:
            try:
                if self.lease_rev is None:
                    self.lease_rev = await kv.create(LEADER_KEY, me)
                    LEADER.set(1)
                    event(log, "leading", instance=self.instance)
                    for pair in self.state.all_pairs():  # what changed while no one led
                        self._mark(pair)
                else:
                    self.lease_rev = await kv.update(LEADER_KEY, me, last=self.lease_rev)
            except APIError as exc:  # the key is someone else's (wrong last sequence)
                if self.lease_rev is not None:
                    event(log, "lease lost", logging.WARNING, instance=self.instance,
                          error=repr(exc))
                    self.lease_rev = None
                    LEADER.set(0)
            except Exception as exc:  # NATS away: keep trying; the CAS fences us
                event(log, "lease renewal failed", logging.WARNING, error=repr(exc))
            await asyncio.sleep(period)

    def _mark(self, pair: Pair) -> None:
        self._dirty.add(pair)
        self._wake.set()

    async def _reconcile(self) -> None:
        """Settle dirty pairs, up to :data:`CONCURRENCY` at once, one task per pair."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                if not self.leading:
                    self._dirty.clear()
                    break
                pair = self._dirty.pop()
                if pair in self._inflight:
                    self._again.add(pair)  # settled again when the running one ends
                    continue
                await self._slots.acquire()
                self._inflight.add(pair)
                task = asyncio.create_task(self._settle_one(pair))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _settle_one(self, pair: Pair) -> None:
        try:
            await self._settle(pair)
        except Exception as exc:
            event(log, "announce failed", logging.WARNING, room=pair[0], user=pair[1],
                  error=repr(exc))
            await asyncio.sleep(0.2)
            self._again.add(pair)
        finally:
            self._inflight.discard(pair)
            self._slots.release()
            if pair in self._again:
                self._again.discard(pair)
                self._mark(pair)

    async def _settle(self, pair: Pair) -> None:
        """Publish the one event that brings ``pair``'s announcement in line, if any.

        The announcement is written with the stream's expected-last-sequence
        check: one round trip, and it fails if anyone changed the key since
        the revision we know (0 or the tombstone for a join, the
        announcement's own revision for a leave)."""
        assert self._js is not None and self._nc is not None
        change = self.state.diff(pair)
        if change is None:
            return
        kind, user, revision = change
        key = announced_key(pair)
        subject = ANNOUNCED_PREFIX + key
        try:
            if kind == "join":
                last = self.state.tombstones.get(pair, 0)
                ack = await self._js.publish(subject, msgspec.json.encode(user),
                                             headers={EXPECTED_LAST: str(last)})
                self.state.set_announced(pair, ack.seq, user)
            else:
                ack = await self._js.publish(subject, b"", headers={
                    "KV-Operation": "DEL", EXPECTED_LAST: str(revision)})
                self.state.drop_announced(pair, ack.seq)
        except APIError:
            # Someone else announced first, or our view is stale: re-read, retry.
            await self._reload_announced(pair, key)
            return
        EVENTS.labels(kind).inc()
        await self._nc.publish(subjects.presence_subject(pair[0]), msgspec.json.encode(
            PresenceNotice(room=pair[0], event=kind, user=user, ts=now_rfc3339())))

    async def _reload_announced(self, pair: Pair, key: str) -> None:
        assert self._announced is not None
        before = self.state.announced.get(pair)
        try:
            entry = await self._announced.get(key)
            self.state.set_announced(pair, entry.revision or 0,
                                     _user_decoder.decode(entry.value or b""))
        except KeyDeletedError as exc:
            self.state.drop_announced(pair, (exc.entry.revision or 0) if exc.entry else 0)
        except NotFoundError:  # absent
            self.state.drop_announced(pair)
        if self.state.announced.get(pair) != before:
            self._mark(pair)


