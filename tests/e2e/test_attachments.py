"""Attachments (issue 14 item 1) through the two real gateways, the object
store on the module's NATS server and history-service's metadata: upload
(multipart and raw), EXIF stripped, thumbnails, ``send`` with attachments
seen live on the other gateway and in history, downloads with their
headers, ranges and caching, and every refusal with its status and code."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from waiting import eventually, scaled

from .client import Session, refused, register_and_login, rest
from .client import expect_error as _err
from .client import user_id as _uid
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e

MAX_BYTES = 256 * 1024  # CHAT_ATTACHMENT_MAX_BYTES here
QUOTA = 3 * MAX_BYTES  # CHAT_ATTACHMENT_QUOTA_BYTES
TTL = 3  # CHAT_ATTACHMENT_UNATTACHED_TTL, seconds
THUMB = 64  # CHAT_ATTACHMENT_THUMB_PX

PDF = (b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n"
       b"2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n")
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(200)


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    logs: Path = tmp_path_factory.mktemp("stack-logs")
    s = Stack(e2e_nats, e2e_db, logs, extra_env={
        "CHAT_ATTACHMENT_MAX_BYTES": str(MAX_BYTES),
        "CHAT_ATTACHMENT_QUOTA_BYTES": str(QUOTA),
        "CHAT_ATTACHMENT_UNATTACHED_TTL": str(TTL),
        "CHAT_HISTORY_ATTACHMENT_SWEEP": "0.5",
        "CHAT_ATTACHMENT_THUMB_PX": str(THUMB),
    })
    try:
        s.start()
        yield s
    finally:
        s.stop()


def png_with_exif() -> bytes:
    img = Image.new("RGB", (200, 100), (30, 120, 200))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0132] = "2026:12:07 10:00:00"  # DateTime
    out = io.BytesIO()
    img.save(out, "PNG", exif=exif.tobytes())
    assert b"SecretCam" in out.getvalue()
    return out.getvalue()


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("user"))


async def _private_room(stack: Stack, owner: dict[str, Any], *members: dict[str, Any]) -> str:
    async with rest(stack.gateway(1).url, owner["access_token"]) as http:
        r = await http.post("/v1/rooms", json={"name": "files", "visibility": "private",
                                               "members": [_uid(m) for m in members]})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


async def _upload(http: httpx.AsyncClient, room: str, data: bytes, name: str,
                  raw: bool = False, content_type: str = "application/octet-stream"
                  ) -> httpx.Response:
    if raw:
        return await http.post(f"/v1/rooms/{room}/attachments", params={"name": name},
                               content=data, headers={"Content-Type": content_type})
    return await http.post(f"/v1/rooms/{room}/attachments",
                           files={"file": (name, data, content_type)})


async def _uploaded(http: httpx.AsyncClient, room: str, data: bytes, name: str,
                    raw: bool = False) -> dict[str, Any]:
    r = await _upload(http, room, data, name, raw)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_send_pictures_and_pdfs_across_gateways(stack: Stack) -> None:
    alice, bob, carol = await _user(stack, 1), await _user(stack, 2), await _user(stack, 1)
    room = await _private_room(stack, alice, bob)
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    b = await Session.open(stack.ws_url(2), bob["access_token"])
    try:
        for s in (a, b):
            await s.request("join", room=room)
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            # The client's Content-Type (octet-stream, or a lie) plays no part.
            png = await _uploaded(http, room, png_with_exif(), "holiday.png")
            pdf = await _uploaded(http, room, PDF, "report été.pdf", raw=True)
        assert png["type"] == "image/png" and (png["width"], png["height"]) == (200, 100)
        assert pdf == {"id": pdf["id"], "name": "report été.pdf", "size": len(PDF),
                       "type": "application/pdf"}

        ack = await a.request("send", room=room, text="", attachments=[png["id"], pdf["id"]])
        event = await b.next_event("message")
        assert event["msg_id"] == ack["msg_id"] and event["text"] == ""
        assert event["attachments"] == [png, pdf]
        async with rest(stack.gateway(2).url, bob["access_token"]) as http:
            page = (await http.get(f"/v1/rooms/{room}/messages")).json()["messages"]
            assert [m["attachments"] for m in page if m["msg_id"] == ack["msg_id"]] == [
                [png, pdf]]

            # The picture: inline, its metadata gone, the right size.
            r = await http.get(f"/v1/attachments/{png['id']}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["content-disposition"].startswith("inline;")
            assert len(r.content) == png["size"] and b"SecretCam" not in r.content
            stored = Image.open(io.BytesIO(r.content))
            assert stored.size == (200, 100) and not stored.getexif()
            # Its thumbnail fits the box.
            t = await http.get(f"/v1/attachments/{png['id']}/thumb")
            assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(t.content)).size == (THUMB, THUMB // 2)

            # The PDF: a download, sandboxed, its name in RFC 8187 form.
            r = await http.get(f"/v1/attachments/{pdf['id']}")
            assert r.status_code == 200 and r.content == PDF
            assert r.headers["content-type"] == "application/pdf"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in r.headers["content-security-policy"]
            assert "default-src 'none'" in r.headers["content-security-policy"]
            assert r.headers["content-disposition"] == (
                "attachment; filename=\"report ete.pdf\"; "
                "filename*=UTF-8''report%20%C3%A9t%C3%A9.pdf")
            _err(await http.get(f"/v1/attachments/{pdf['id']}/thumb"), 404, "not_found")

            # Ranges, and caching by ETag.
            r = await http.get(f"/v1/attachments/{pdf['id']}", headers={"Range": "bytes=0-3"})
            assert r.status_code == 206 and r.content == b"%PDF"
            assert r.headers["content-range"] == f"bytes 0-3/{len(PDF)}"
            r = await http.get(f"/v1/attachments/{pdf['id']}", headers={"Range": "bytes=-6"})
            assert r.status_code == 206 and r.content == PDF[-6:]
            r = await http.get(f"/v1/attachments/{pdf['id']}",
                               headers={"Range": f"bytes={len(PDF)}-"})
            assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(PDF)}"
            etag = r.headers["etag"]
            r = await http.get(f"/v1/attachments/{pdf['id']}", headers={"If-None-Match": etag})
            assert r.status_code == 304 and not r.content

        # Not a member (and an unknown id): 404, exactly alike.
        async with rest(stack.gateway(2).url, carol["access_token"]) as http:
            for path in (f"/v1/attachments/{png['id']}", f"/v1/attachments/{png['id']}/thumb",
                         "/v1/attachments/a_unknown"):
                _err(await http.get(path), 404, "not_found")
            _err(await _upload(http, room, PDF, "x.pdf"), 404, "not_found")
    finally:
        await a.close()
        await b.close()


async def test_upload_refusals(stack: Stack) -> None:
    alice, bob = await _user(stack, 1), await _user(stack, 1)
    room = await _private_room(stack, alice, bob)
    public = unique("pub")
    async with rest(stack.gateway(1).url, alice["access_token"]) as http:
        # Too large, by the declared length, or counted while streaming (chunked).
        _err(await _upload(http, room, b"a" * (MAX_BYTES + 1), "big.txt", raw=True),
             413, "too_large")
        _err(await _upload(http, room, b"a" * (MAX_BYTES + 1), "big.txt"), 413, "too_large")

        async def chunks() -> Any:
            for _ in range(MAX_BYTES // 16384 + 2):
                yield b"a" * 16384

        r = await http.post(f"/v1/rooms/{room}/attachments", params={"name": "big.txt"},
                            content=chunks())
        _err(r, 413, "too_large")
        # Types decided from the bytes: a PDF named .png, an executable named .jpg.
        _err(await _upload(http, room, PDF, "cat.png", content_type="image/png"),
             415, "bad_request")
        _err(await _upload(http, room, ELF, "cat.jpg", content_type="image/jpeg"),
             415, "bad_request")
        _err(await _upload(http, room, b"<svg onload=alert(1)>\x00", "x.svg"),
             415, "bad_request")
        _err(await _upload(http, room, b"", "empty.txt", raw=True), 400, "bad_request")
        # Text is text: UTF-8 without control bytes.
        text = await _uploaded(http, room, "héllo\n".encode(), "notes.txt")
        assert text["type"] == "text/plain; charset=utf-8"
        # A public room seen but not joined: forbidden; no such room: not_found.
        async with rest(stack.gateway(1).url, bob["access_token"]) as other:
            await other.post("/v1/rooms", json={"id": public, "name": "p"})
        _err(await _upload(http, public, PDF, "x.pdf"), 403, "forbidden")
        _err(await _upload(http, unique("nowhere"), PDF, "x.pdf"), 404, "not_found")
    async with rest(stack.gateway(1).url) as anonymous:
        _err(await _upload(anonymous, room, PDF, "x.pdf"), 401, "unauthorized")
        exported = (await anonymous.get("/metrics")).text
    assert 'chat_attachment_uploads_refused_total{status="415"}' in exported
    assert 'chat_attachment_uploads_total{type="text/plain; charset=utf-8"}' in exported


async def test_an_upload_over_the_limit_is_not_read_to_its_end(stack: Stack) -> None:
    """The gateway answers 413 while the client is still sending, and closes."""
    alice = await _user(stack, 2)
    room = await _private_room(stack, alice)
    url = urlsplit(stack.gateway(2).url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write((f"POST /v1/rooms/{room}/attachments?name=big.txt HTTP/1.1\r\n"
                      f"Host: {url.netloc}\r\nAuthorization: Bearer {alice['access_token']}\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"a" * 65536
        for _ in range(MAX_BYTES // len(chunk) + 1):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        # No final chunk: the body has not ended, yet the answer comes.
        status = await asyncio.wait_for(reader.readline(), scaled(10))
        assert status.startswith(b"HTTP/1.1 413"), status
        rest_of = await asyncio.wait_for(reader.read(), scaled(10))  # then it closes
        assert b"connection: close" in rest_of.lower() and b"too_large" in rest_of
    finally:
        writer.close()


async def test_send_refusals(stack: Stack) -> None:
    alice, bob = await _user(stack, 1), await _user(stack, 2)
    room = await _private_room(stack, alice, bob)
    other_room = await _private_room(stack, alice, bob)
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    b = await Session.open(stack.ws_url(2), bob["access_token"])
    try:
        for s in (a, b):
            await s.request("join", room=room)
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            mine = await _uploaded(http, room, PDF, "a.pdf")
            elsewhere = await _uploaded(http, other_room, PDF, "b.pdf")
        # Someone else's upload, or an id of nobody: forbidden alike.
        assert await refused(b, "send", room=room, text="", attachments=[mine["id"]]) == (
            "forbidden")
        assert await refused(a, "send", room=room, text="x", attachments=["a_nobody"]) == (
            "forbidden")
        # The caller's upload to another room.
        assert await refused(a, "send", room=room, text="x",
                             attachments=[elsewhere["id"]]) == "bad_request"
        # Empty text without attachments; too many; repeated ids.
        assert await refused(a, "send", room=room, text=" ") == "bad_request"
        assert await refused(a, "send", room=room, text="x",
                             attachments=[f"a_{i}" for i in range(11)]) == "bad_request"
        assert await refused(a, "send", room=room, text="x",
                             attachments=[mine["id"], mine["id"]]) == "bad_request"
        # Nothing was attached by the refusals: it still goes, once.
        first = await a.request("send", room=room, text="", attachments=[mine["id"]],
                                client_msg_id="c1")
        again = await a.request("send", room=room, text="", attachments=[mine["id"]],
                                client_msg_id="c1")
        assert (again["msg_id"], again["seq"]) == (first["msg_id"], first["seq"])
        assert await refused(a, "send", room=room, text="again",
                             attachments=[mine["id"]]) == "conflict"
        # The same client_msg_id with other attachments is no retry.
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            extra = await _uploaded(http, room, PDF, "c.pdf")
        assert await refused(a, "send", room=room, text="", client_msg_id="c1",
                             attachments=[mine["id"], extra["id"]]) == "conflict"
        assert await refused(a, "send", room=room, text="", client_msg_id="c1",
                             attachments=[extra["id"]]) == "conflict"
        await a.request("send", room=room, text="", attachments=[extra["id"]])  # still free
    finally:
        await a.close()
        await b.close()


async def test_quota(stack: Stack) -> None:
    alice = await _user(stack, 1)
    room = await _private_room(stack, alice)
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    try:
        await a.request("join", room=room)
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            ids = [(await _uploaded(http, room, b"q" * MAX_BYTES, f"{i}.txt"))["id"]
                   for i in range(QUOTA // MAX_BYTES)]
            await a.request("send", room=room, text="three", attachments=ids)  # kept
            _err(await _upload(http, room, b"one more", "x.txt"), 413, "too_large")
    finally:
        await a.close()


async def test_deleting_a_message_deletes_its_attachments(stack: Stack) -> None:
    alice, bob = await _user(stack, 1), await _user(stack, 2)
    room = await _private_room(stack, alice, bob)
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    try:
        await a.request("join", room=room)
        async with rest(stack.gateway(1).url, alice["access_token"]) as http:
            png = await _uploaded(http, room, png_with_exif(), "p.png")
        ack = await a.request("send", room=room, text="soon gone", attachments=[png["id"]])
        async with rest(stack.gateway(2).url, bob["access_token"]) as http:
            assert (await http.get(f"/v1/attachments/{png['id']}")).status_code == 200
            await a.request("delete", room=room, msg_id=ack["msg_id"])

            async def gone() -> bool:
                r = await http.get(f"/v1/attachments/{png['id']}")
                t = await http.get(f"/v1/attachments/{png['id']}/thumb")
                return r.status_code == t.status_code == 404

            await eventually(gone, interval=0.1)
            page = (await http.get(f"/v1/rooms/{room}/messages")).json()["messages"]
            assert all("attachments" not in m for m in page)
    finally:
        await a.close()


async def test_uploads_never_sent_are_collected(stack: Stack) -> None:
    alice = await _user(stack, 1)
    room = await _private_room(stack, alice)
    async with rest(stack.gateway(1).url, alice["access_token"]) as http:
        pdf = await _uploaded(http, room, PDF, "draft.pdf")
        assert (await http.get(f"/v1/attachments/{pdf['id']}")).status_code == 200

        async def collected() -> bool:
            return (await http.get(f"/v1/attachments/{pdf['id']}")).status_code == 404

        await eventually(collected, timeout=TTL + 15, interval=0.2)
