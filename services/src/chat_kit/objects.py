"""The attachments' JetStream object store (docs/protocol.md §10): open or
create the bucket, store a file from a file object, read an object's bytes
(or a range of them) chunk by chunk, delete an object.

The bucket ``CHAT_ATTACHMENTS`` is the stream ``OBJ_CHAT_ATTACHMENTS``:
file storage, ``CHAT_STREAM_REPLICAS`` replicas (R3 on a cluster), no
limits of its own (the per-user quota bounds it). history-service creates it
at start when missing (as it does the CHAT stream); gateways only look it up.

Reads are direct gets of the object's chunks one after another
(``next_by_subj``): one request per chunk (128 KiB), pulled only as fast as
the HTTP client takes them, no consumer to create or clean up, and memory
bounded by one chunk. A range starting deep into a file still walks the
chunks before it (read, not sent): files are at most
``CHAT_ATTACHMENT_MAX_BYTES``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from chat_contract.subjects import ATTACHMENTS_BUCKET, ATTACHMENTS_STREAM


class ObjectMissing(LookupError):
    """No such object (never stored, deleted, or its chunks are gone)."""


async def open_bucket(js: JetStreamContext, *, replicas: int | None = None) -> ObjectStore:
    """The attachments bucket; created (file storage, ``replicas``) when missing
    and ``replicas`` is given, else BucketNotFoundError."""
    try:
        return await js.object_store(ATTACHMENTS_BUCKET)
    except BucketNotFoundError:
        if replicas is None:
            raise
    return await js.create_object_store(ATTACHMENTS_BUCKET, config=api.ObjectStoreConfig(
        description="chat attachments (files and thumbnails)",
        storage=api.StorageType.FILE, replicas=replicas))


async def put(store: ObjectStore, name: str, data: io.BufferedIOBase | bytes) -> api.ObjectInfo:
    """Store ``data`` as object ``name`` (read from a file in a worker thread)."""
    return await store.put(name, data)


async def info(store: ObjectStore, name: str) -> api.ObjectInfo:
    try:
        return await store.get_info(name)
    except (ObjectNotFoundError, NotFoundError):
        raise ObjectMissing(name) from None


def _chunks_subject(nuid: str) -> str:
    return f"$O.{ATTACHMENTS_BUCKET}.C.{nuid}"


def _meta_subject(name: str) -> str:
    return f"$O.{ATTACHMENTS_BUCKET}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


async def read(js: JetStreamContext, obj: api.ObjectInfo, start: int = 0,
               end: int | None = None) -> AsyncIterator[bytes]:
    """The bytes ``start``..``end`` (inclusive; None: to the last) of ``obj``."""
    size = obj.size or 0
    last = size - 1 if end is None else min(end, size - 1)
    if obj.nuid is None or start > last:
        return
    subject = _chunks_subject(obj.nuid)
    seq, offset = 1, 0
    for _ in range(obj.chunks or 0):
        try:
            msg = await js.get_msg(ATTACHMENTS_STREAM, seq=seq, subject=subject, next=True,
                                   direct=True)
        except NotFoundError:
            raise ObjectMissing(obj.name or "") from None
        data = msg.data or b""
        assert msg.seq is not None
        seq = msg.seq + 1
        lo, hi = offset, offset + len(data) - 1
        offset += len(data)
        if hi < start:
            continue
        yield data[max(0, start - lo): last - lo + 1]
        if hi >= last:
            return


async def delete(js: JetStreamContext, store: ObjectStore, name: str) -> bool:
    """Remove object ``name`` entirely (its chunks and its meta entry; no
    delete marker is left, ids are never reused). False if it was not there."""
    try:
        found = await store.get_info(name, show_deleted=True)
    except (ObjectNotFoundError, NotFoundError):
        return False
    if found.nuid:
        await js.purge_stream(ATTACHMENTS_STREAM, subject=_chunks_subject(found.nuid))
    await js.purge_stream(ATTACHMENTS_STREAM, subject=_meta_subject(name))
    return True
