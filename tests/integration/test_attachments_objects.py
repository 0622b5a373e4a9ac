"""chat_kit.objects on real NATS: the attachments bucket (R3 on a cluster),
files of several chunks stored from a file object, read whole and by ranges
across chunk boundaries, and removed without a trace."""

from __future__ import annotations

import io
import os
from typing import Any

import nats
import pytest
from nats.js.errors import BucketNotFoundError, NotFoundError

from chat_contract import subjects
from chat_devstack.nats import NatsCluster
from chat_kit import objects

CHUNK = 128 * 1024  # nats-py's chunk size


async def _read(js: Any, info: Any, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([part async for part in objects.read(js, info, start, end)])


async def test_store_read_ranges_delete(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream(timeout=10)
    try:
        with pytest.raises(BucketNotFoundError):  # gateways never create it
            await objects.open_bucket(js)
        bucket = await objects.open_bucket(js, replicas=1)
        data = os.urandom(3 * CHUNK + 1234)
        await objects.put(bucket, "a_big", io.BufferedReader(io.BytesIO(data)))
        await objects.put(bucket, "a_small", b"hello")
        info = await objects.info(bucket, "a_big")
        assert (info.size, info.chunks) == (len(data), 4)
        assert await _read(js, info) == data
        for start, end in ((0, 0), (CHUNK - 1, CHUNK), (CHUNK, 2 * CHUNK - 1),
                           (CHUNK - 10, 3 * CHUNK + 10), (len(data) - 5, None),
                           (5, len(data) + 100)):
            assert await _read(js, info, start, end) == data[start:None if end is None
                                                            else end + 1], (start, end)
        assert await _read(js, info, len(data), None) == b""
        # Removed: chunks and meta purged, nothing left to find; twice is no error.
        assert await objects.delete(js, bucket, "a_big")
        assert not await objects.delete(js, bucket, "a_big")
        with pytest.raises(objects.ObjectMissing):
            await objects.info(bucket, "a_big")
        state = (await js.stream_info(subjects.ATTACHMENTS_STREAM)).state
        assert state.messages == 2  # a_small's chunk and meta only
        assert await _read(js, await objects.info(bucket, "a_small")) == b"hello"
    finally:
        await nc.close()


async def test_the_bucket_has_the_streams_replicas_on_a_cluster(
        nats_cluster: NatsCluster, nats_cluster_admin: dict[str, Any]) -> None:
    nc = await nats.connect(servers=nats_cluster.urls, **nats_cluster_admin)
    js = nc.jetstream(timeout=10)
    try:
        bucket = await objects.open_bucket(js, replicas=3)
        assert (await js.stream_info(subjects.ATTACHMENTS_STREAM)).config.num_replicas == 3
        await objects.put(bucket, "a_r3", b"x" * 1000)
        assert await _read(js, await objects.info(bucket, "a_r3"), 10, 19) == b"x" * 10
    finally:
        try:
            await js.delete_stream(subjects.ATTACHMENTS_STREAM)  # the cluster is shared
        except NotFoundError:
            pass
        await nc.close()
