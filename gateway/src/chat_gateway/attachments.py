"""Attachment routes (docs/protocol.md §5, §11 "Attachments"):
``POST /v1/rooms/{id}/attachments``, ``GET /v1/attachments/{id}`` and
``GET /v1/attachments/{id}/thumb``.

Upload, in order: the token; history-service says whether the caller may
upload to the room (``not_found`` for a room hidden from them, ``forbidden``
for a visible one they are not a member of) and how much quota is left —
all before the body is read. Then the body (multipart field ``file``, or
the raw body with ``?name=``) streams into a spooled temporary file (in
memory up to 1 MiB, then on disk), counted as it comes: past
``CHAT_ATTACHMENT_MAX_BYTES`` the gateway stops reading and answers 413
(``Connection: close``). The type is decided from the bytes
(:mod:`.filetypes`): not allowed → 415 (code ``bad_request``). Images are
cleaned and thumbnailed (:mod:`.images`, one at a time per gateway).
history-service registers the metadata (checking the quota again,
atomically), then the file (and thumbnail) go into the object store
(chat_kit.objects); the answer is 201 with the attachment object.

Download: history-service says whether the caller may read it (``not_found``
otherwise, also for unknown ids); the bytes stream from the object store
chunk by chunk, with the headers of :mod:`.downloads`, ``ETag`` (the
object's SHA-256), ``If-None-Match`` → 304, and single ranges → 206.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.object_store import ObjectStore
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from chat_contract import rooms, rpc
from chat_contract.bus import AttachmentRef, UploadCheck, UploadRecord
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import Attachment, User
from chat_kit import metrics, objects

from . import downloads, filetypes, images
from .multipart import FilePart, boundary_of
from .rest import RestContext, caller_claims, error_response, json_response

# What a multipart body may carry beyond the file (boundaries, part headers,
# other small fields) before the declared length alone refuses it.
MULTIPART_SLACK = 64 * 1024
# Uploads held in memory before the spool moves to a temporary file.
SPOOL_MEMORY = 1 << 20
# Refused (too large, or any refusal before the body was read) while the
# client still sends: at most this much more is read and
# thrown away (and only while it keeps coming, DRAIN_IDLE seconds apart), so
# the client can read the 413 before the connection closes instead of a
# reset; a bigger rest is never read.
DRAIN_MAX = 1 << 20
DRAIN_IDLE = 1.0


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int  # CHAT_ATTACHMENT_MAX_BYTES
    thumb_px: int  # CHAT_ATTACHMENT_THUMB_PX
    max_pixels: int  # CHAT_ATTACHMENT_MAX_PIXELS


class Unsupported(ChatError):
    """A type not allowed: HTTP 415 with the code ``bad_request``."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)

    @property
    def http_status(self) -> int:
        return 415


def new_attachment_id() -> str:
    return "a_" + secrets.token_urlsafe(16)


class Attachments:
    def __init__(self, ctx: RestContext, js: JetStreamContext, limits: UploadLimits) -> None:
        self._ctx = ctx
        self._js = js
        self._limits = limits
        self._bucket: ObjectStore | None = None
        # Decoded pixels take ~4 bytes each: one image at a time per gateway.
        self._images = asyncio.Semaphore(1)

    async def bucket(self) -> ObjectStore:
        """The object store (history-service creates it; looked up once)."""
        if self._bucket is None:
            try:
                self._bucket = await objects.open_bucket(self._js)
            except BucketNotFoundError:
                raise ChatError(ErrorCode.UNAVAILABLE, "attachment store unavailable") from None
        return self._bucket

    # --- upload -----------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        try:
            return await self._upload(request)
        except ChatError as exc:
            await _drain(request)
            response = error_response(exc)
            metrics.ATTACHMENT_REFUSED.labels(str(response.status_code)).inc()
            # The rest of the body is never read: the connection cannot be reused.
            response.headers["Connection"] = "close"
            return response

    async def _upload(self, request: Request) -> Response:
        claims = await caller_claims(self._ctx, request)
        caller = User(id=claims.sub, name=claims.name)
        room: str = request.path_params["room"]
        if not rooms.is_valid_room_id(room):
            raise ChatError(ErrorCode.BAD_REQUEST, "invalid room id")
        allowance = await self._ctx.services.request(rpc.ATTACHMENTS_CHECK,
                                                     UploadCheck(caller=caller, room=room))
        if allowance.left <= 0:
            raise ChatError(ErrorCode.TOO_LARGE, "storage quota exceeded")
        limit = self._limits.max_bytes
        content_type = request.headers.get("content-type", "")
        parser = (FilePart(boundary_of(content_type))
                  if content_type.lower().startswith("multipart/form-data") else None)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + (MULTIPART_SLACK if parser else 0):
            raise ChatError(ErrorCode.TOO_LARGE, f"file exceeds {limit} bytes")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            size, text = await self._receive(request, parser, spool, limit)
            name = parser.filename if parser is not None else request.query_params.get("name")
            if size == 0:
                raise ChatError(ErrorCode.BAD_REQUEST, "empty file")
            if size > allowance.left:
                raise ChatError(ErrorCode.TOO_LARGE, "storage quota exceeded")
            spool.seek(0)
            kind = filetypes.sniff(spool.read(filetypes.HEAD)) or (
                filetypes.TEXT if text.finish() else None)
            if kind is None:
                raise Unsupported("file type not allowed (allowed: PNG, JPEG, GIF, WebP,"
                                  " PDF, ZIP, UTF-8 text)")
            name = downloads.clean_name(name)
            if filetypes.name_contradicts(name, kind):
                raise Unsupported(f"the name says another type than the bytes ({kind})")
            return await self._store(caller, room, name, kind, spool, size)

    async def _receive(self, request: Request, parser: FilePart | None, spool: IO[bytes],
                       limit: int) -> tuple[int, filetypes.TextCheck]:
        """Read the body into ``spool``, counting the file's bytes; stop past ``limit``."""
        size = 0
        text = filetypes.TextCheck()
        async for chunk in request.stream():
            for piece in parser.feed(chunk) if parser is not None else (chunk,):
                size += len(piece)
                if size > limit:
                    raise ChatError(ErrorCode.TOO_LARGE, f"file exceeds {limit} bytes")
                text.feed(piece)
                spool.write(piece)
            if parser is not None and parser.done:
                break
        if parser is not None:
            parser.finish()
        return size, text

    async def _store(self, caller: User, room: str, name: str, kind: str,
                     spool: IO[bytes], size: int) -> Response:
        width = height = None
        data: IO[bytes] | bytes = spool
        thumb: bytes | None = None
        thumb_type: str | None = None
        if kind in filetypes.IMAGES:
            async with self._images:
                try:
                    done = await asyncio.to_thread(
                        images.process, spool, kind, thumb_px=self._limits.thumb_px,
                        max_pixels=self._limits.max_pixels)
                except images.NotAnImage:
                    raise Unsupported(f"not a readable {kind} image") from None
            width, height = done.width, done.height
            thumb, thumb_type = done.thumb, done.thumb_type
            if done.data is not None:
                data, size = done.data, len(done.data)
        attachment = Attachment(id=new_attachment_id(), name=name,
                                size=size, type=kind, width=width, height=height)
        await self._ctx.services.request(rpc.ATTACHMENTS_REGISTER, UploadRecord(
            caller=caller, room=room, attachment=attachment, thumb=thumb_type))
        bucket = await self.bucket()
        if not isinstance(data, bytes):
            data.seek(0)
        try:
            await objects.put(bucket, attachment.id, data)  # type: ignore[arg-type]
            if thumb is not None:
                await objects.put(bucket, attachment.id + ".thumb", thumb)
        except Exception as exc:  # the row without its bytes is swept after the TTL
            raise ChatError(ErrorCode.UNAVAILABLE, "attachment store unavailable") from exc
        metrics.ATTACHMENT_UPLOADS.labels(kind).inc()
        metrics.ATTACHMENT_UPLOAD_BYTES.inc(size)
        return json_response(attachment, 201)

    # --- download ---------------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        return await self._download(request, thumb=False)

    async def thumbnail(self, request: Request) -> Response:
        return await self._download(request, thumb=True)

    async def _download(self, request: Request, *, thumb: bool) -> Response:
        claims = await caller_claims(self._ctx, request)
        view = await self._ctx.services.request(rpc.ATTACHMENTS_GET, AttachmentRef(
            caller=User(id=claims.sub, name=claims.name), id=request.path_params["id"]))
        a = view.attachment
        if thumb and view.thumb is None:
            raise ChatError(ErrorCode.NOT_FOUND, "no thumbnail (not an image)")
        try:
            found = await objects.info(await self.bucket(), a.id + ".thumb" if thumb else a.id)
        except objects.ObjectMissing:
            raise ChatError(ErrorCode.NOT_FOUND, "unknown attachment") from None
        media_type = view.thumb if thumb and view.thumb else a.type
        headers = downloads.security_headers(a.name, media_type in filetypes.IMAGES)
        etag = f'"{(found.digest or found.nuid or a.id).replace(chr(34), "")}"'
        headers["ETag"] = etag
        if etag in _etags(request.headers.get("if-none-match")):
            metrics.ATTACHMENT_DOWNLOADS.labels("304").inc()
            return Response(status_code=304, headers=headers)
        size = found.size or 0
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range.strip() != etag:
            wanted = None  # the client holds another version: the whole file
        try:
            span = downloads.parse_range(wanted, size)
        except downloads.Unsatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            metrics.ATTACHMENT_DOWNLOADS.labels("416").inc()
            return Response(status_code=416, headers=headers)
        start, end, status = 0, size - 1, 200
        if span is not None:
            start, end, status = span[0], span[1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(max(0, end - start + 1))
        metrics.ATTACHMENT_DOWNLOADS.labels(str(status)).inc()
        return StreamingResponse(objects.read(self._js, found, start, end), status_code=status,
                                 headers=headers, media_type=media_type)


async def _drain(request: Request) -> None:
    """Read and drop what the client is still sending, within DRAIN_MAX bytes
    and while it keeps coming (see DRAIN_MAX)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_MAX + SPOOL_MEMORY:
        return
    budget = DRAIN_MAX
    stream = request.stream().__aiter__()
    try:
        while budget > 0:
            budget -= len(await asyncio.wait_for(stream.__anext__(), DRAIN_IDLE))
    except (StopAsyncIteration, TimeoutError, ClientDisconnect, RuntimeError):
        pass  # RuntimeError: the stream was consumed to its end already


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def routes(ctx: RestContext, attachments: Attachments) -> list[Route]:
    async def guarded(handler: Callable[[Request], Awaitable[Response]],
                      request: Request) -> Response:
        try:
            return await handler(request)
        except ChatError as exc:
            return error_response(exc)

    async def upload(request: Request) -> Response:
        return await attachments.upload(request)

    async def download(request: Request) -> Response:
        return await guarded(attachments.download, request)

    async def thumbnail(request: Request) -> Response:
        return await guarded(attachments.thumbnail, request)

    return [
        Route("/v1/rooms/{room}/attachments", upload, methods=["POST"]),
        Route("/v1/attachments/{id}", download, methods=["GET"]),
        Route("/v1/attachments/{id}/thumb", thumbnail, methods=["GET"]),
    ]
