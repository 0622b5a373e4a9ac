"""The history Component: what ``chat_kit.runtime`` starts and stops.

Start: database pools (one per class of work: capacity.py) → migrations →
stream (created if missing, else only verified), durable push consumer, its
subscription and writer, the stream monitor (gauges), the stream eraser →
the ``history`` micro service. Stop in reverse: stop taking requests and let
those in flight finish, let the consumer store and ack what it was delivered
(or hand it back), stop the eraser, close the pools. NATS
itself is drained by the runtime afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from nats.micro.service import Service
from starlette.routing import BaseRoute

from chat_contract import rpc
from chat_kit.bus import serves, start_service
from chat_kit.db import migrate
from chat_kit.passwords import Passwords
from chat_kit.runtime import Runtime
from chat_kit.stream import StreamSettings
from chat_kit.throttle import TokenBuckets

from . import __version__
from .activity_endpoints import ActivityEndpoints
from .api import HistoryApi
from .attachment_endpoints import AttachmentEndpoints, AttachmentReaper
from .attachments_store import AttachmentsStore
from .block_endpoints import BlockEndpoints
from .capacity import Pools, UserLimiter
from .config import HistorySettings
from .consumer import HistoryConsumer
from .erasure import StreamEraser
from .extras_endpoints import ExtrasEndpoints
from .extras_store import ExtrasStore
from .freshness import CommitTrackers
from .room_endpoints import RoomEndpoints
from .rooms_context import RoomsContext, db_guard
from .rooms_store import RoomsStore
from .server_endpoints import ServerEndpoints
from .store import MessageStore
from .stream_monitor import StreamMonitor
from .troubles import Troubles

SERVICE = "history"
SCHEMA = "history"
_STOP_REQUESTS_TIMEOUT = 5.0


class HistoryComponent:
    def __init__(self, settings: HistorySettings, stream: StreamSettings | None = None) -> None:
        self.settings = settings
        # The CHAT stream as configured: this service creates it when missing
        # (CHAT_STREAM_* variables; replicas from CommonSettings' CHAT_STREAM_REPLICAS).
        self.stream = stream
        self._pools: Pools | None = None
        self._store: MessageStore | None = None
        self._eraser: StreamEraser | None = None
        # One consumer per chat stream (partition); reads wait on their room's.
        self._consumers: list[HistoryConsumer] = []
        self._monitor: StreamMonitor | None = None
        self._trackers: CommitTrackers | None = None
        self._api: HistoryApi | None = None
        self._service: Service | None = None
        self._passwords: Passwords | None = None
        self._reaper: AttachmentReaper | None = None

    @property
    def reaper(self) -> AttachmentReaper:
        assert self._reaper is not None, "component not started"
        return self._reaper

    @property
    def eraser(self) -> StreamEraser:
        assert self._eraser is not None, "component not started"
        return self._eraser

    @property
    def store(self) -> MessageStore:
        assert self._store is not None, "component not started"
        return self._store

    @property
    def consumer(self) -> HistoryConsumer:
        """The first stream's consumer (the only one unless partitioned)."""
        assert self._consumers, "component not started"
        return self._consumers[0]

    @property
    def consumers(self) -> list[HistoryConsumer]:
        return list(self._consumers)

    @property
    def trackers(self) -> CommitTrackers:
        """How far each stream is stored; reads wait on them (read-your-writes)."""
        assert self._trackers is not None, "component not started"
        return self._trackers

    async def start(self, rt: Runtime) -> None:
        s = self.settings
        self._pools = pools = await Pools.open(s, rt.stopping)
        await migrate(pools.ingest, SCHEMA, "chat_history")
        # Storing the stream (and erasing from it) has the ingest pool to itself.
        self._store = MessageStore(pools.ingest)
        stream = self.stream or dataclasses.replace(StreamSettings.from_env(),
                                                    replicas=rt.settings.stream_replicas)
        # Reads give up on the stream as soon as on storage: same bound for both.
        js = rt.nc.jetstream(timeout=s.catchup_timeout)
        self._trackers = CommitTrackers(js, stream)
        self._eraser = StreamEraser(js, self._store, stream,
                                    Troubles(logging.getLogger("chat_history.erasure")))
        for name in stream.names():
            consumer = HistoryConsumer(rt.nc, self._store, batch=s.batch, linger=s.linger,
                                       stream=stream, name=name)
            await consumer.start(rt.stopping)
            rt.checks.append(consumer.is_ready)
            consumer.on_stored = self._trackers.for_stream(name).nudge
            consumer.on_changed = self._eraser.wake
            self._consumers.append(consumer)
        # Attachments (README "Attachments"): the bucket (created when missing,
        # as the stream), a deleted message's files go with its text, expired
        # uploads are swept.
        attachments_store = AttachmentsStore(pools.interactive)
        self._reaper = AttachmentReaper(
            js, attachments_store, ttl=s.attachment_ttl, sweep=s.attachment_sweep,
            troubles=Troubles(logging.getLogger("chat_history.attachments")))
        await self._reaper.open(stream.replicas)
        self._eraser.also = self._reaper.drop_deleted
        self._reaper.start()
        # Also works what earlier processes left queued (history.erasures).
        self._eraser.start()
        # This service owns the stream: it exports its size, lag and cluster state.
        self._monitor = StreamMonitor(rt.nc.jetstream(timeout=rt.settings.request_timeout),
                                      layout=stream)
        self._monitor.start()
        # Rooms (README "Rooms"): history reads ask it who may read; its edit and
        # read decisions wait for storage through the history API's catch-up.
        self._passwords = Passwords.from_settings(s.hashing, deadline=rt.settings.request_timeout)
        rooms_store = RoomsStore(pools.interactive, search_pool=pools.search,
                                 search_timeout=s.search_timeout)
        rooms_ctx = RoomsContext(rt.nc, rooms_store, lookup_timeout=rt.settings.request_timeout)
        rooms = RoomEndpoints(
            rooms_ctx, self._passwords,
            creates=UserLimiter(0, s.room_creates_per_window, s.room_create_window, "new rooms"),
            rooms_owned_max=s.rooms_owned_max)
        rooms.password_sets = TokenBuckets(s.room_password_rate / 60.0, s.room_password_rate)
        blocks = BlockEndpoints(rooms_ctx)
        activity = ActivityEndpoints(rooms_ctx, UserLimiter(
            s.search_per_user, s.searches_per_window, s.search_window, "searches"))
        # Reactions, threads and mentions (README "Reactions, threads, mentions").
        extras_store = ExtrasStore(pools.interactive)
        extras = ExtrasEndpoints(rooms_ctx, extras_store, s.reactions_per_message)
        uploads = AttachmentEndpoints(rooms_ctx, attachments_store, s.attachment_quota)
        server = ServerEndpoints(rooms_store)  # the server API's reads (README "Server API")
        # History pages are interactive reads: their own store on that pool.
        self._api = HistoryApi(js, MessageStore(pools.interactive), self._trackers,
                               s.catchup_timeout, access=rooms.read_access,
                               extras=extras_store)
        rooms_ctx.fresh = self._api.ensure_fresh
        rooms_ctx.stream_last = self._api.stream_last
        g = db_guard  # a database outage answers unavailable
        self._service = await start_service(rt.nc, SERVICE, __version__, dict([
            serves(SERVICE, rpc.HISTORY_MESSAGES, self._api.messages),
            serves(SERVICE, rpc.ROOMS_CREATE, g(rooms.create)),
            serves(SERVICE, rpc.ROOMS_GET, g(rooms.get)),
            serves(SERVICE, rpc.ROOMS_LIST, g(rooms.list_rooms)),
            serves(SERVICE, rpc.ROOMS_ACCESS, g(rooms.access)),
            serves(SERVICE, rpc.ROOMS_MEMBER, g(rooms.member)),
            serves(SERVICE, rpc.ROOMS_ARCHIVE, g(rooms.archive)),
            serves(SERVICE, rpc.ROOMS_DM, g(rooms.dm)),
            serves(SERVICE, rpc.ROOMS_BLOCK, g(blocks.block)),
            serves(SERVICE, rpc.ROOMS_BLOCKS, g(blocks.blocks)),
            serves(SERVICE, rpc.ROOMS_CHANGE, g(activity.change)),
            serves(SERVICE, rpc.ROOMS_READ, g(activity.read)),
            serves(SERVICE, rpc.ROOMS_SEARCH, g(activity.search)),
            serves(SERVICE, rpc.ROOMS_REACT, g(extras.react)),
            serves(SERVICE, rpc.ROOMS_RESOLVE, g(extras.resolve)),
            serves(SERVICE, rpc.ROOMS_DIRECTORY, g(server.directory)),
            serves(SERVICE, rpc.ROOMS_ROSTER, g(server.roster)),
            serves(SERVICE, rpc.ATTACHMENTS_CHECK, g(uploads.check)),
            serves(SERVICE, rpc.ATTACHMENTS_REGISTER, g(uploads.register)),
            serves(SERVICE, rpc.ATTACHMENTS_CLAIM, g(uploads.claim)),
            serves(SERVICE, rpc.ATTACHMENTS_GET, g(uploads.get)),
        ]))

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None
        if self._api is not None:
            await self._api.wait_idle(_STOP_REQUESTS_TIMEOUT)
        if self._trackers is not None:
            await self._trackers.close()
        if self._monitor is not None:
            await self._monitor.stop()
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers))
        if self._eraser is not None:
            await self._eraser.stop()
        if self._reaper is not None:
            await self._reaper.stop()
        if self._store is not None:
            await self._store.close()  # the insert connections it kept
        if self._pools is not None:
            for pool in self._pools.all():
                try:
                    await asyncio.wait_for(pool.close(), _STOP_REQUESTS_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(Exception):
                        pool.terminate()
            self._pools = None
        if self._passwords is not None:
            self._passwords.close()
            self._passwords = None

    def routes(self) -> list[BaseRoute]:
        return []  # /healthz, /readyz and /metrics come from chat_kit
