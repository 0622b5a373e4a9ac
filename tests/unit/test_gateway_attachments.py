"""The gateway's attachment pieces without I/O: type sniffing, names, ranges,
download headers, the multipart parser, image cleaning."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from chat_contract.errors import ChatError
from chat_gateway import filetypes, images
from chat_gateway.downloads import (
    Unsatisfiable,
    clean_name,
    content_disposition,
    parse_range,
    security_headers,
)
from chat_gateway.multipart import FilePart, boundary_of


def _image(fmt: str, mode: str = "RGB", size: tuple[int, int] = (300, 150),
           exif: bool = True) -> bytes:
    img = Image.new(mode, size, (10, 200, 30) if mode == "RGB" else (10, 200, 30, 128))
    out = io.BytesIO()
    kwargs = {}
    if exif:
        e = Image.Exif()
        e[0x010F] = "SecretCam"
        kwargs["exif"] = e.tobytes()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize(("data", "kind"), [
    (b"\x89PNG\r\n\x1a\n" + bytes(8), filetypes.PNG),
    (b"\xff\xd8\xff\xe0" + bytes(8), filetypes.JPEG),
    (b"GIF89a" + bytes(8), filetypes.GIF),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 ", filetypes.WEBP),
    (b"%PDF-1.7\n", filetypes.PDF),
    (b"PK\x03\x04" + bytes(8), filetypes.ZIP),
    (b"\x7fELF\x02\x01\x01", None),  # executables
    (b"MZ\x90\x00\x03", None),
    (b"<svg xmlns=", None),  # maybe text; never an image
    (b"RIFF\x10\x00\x00\x00AVI ", None),
])
def test_sniff_by_magic_numbers(data: bytes, kind: str | None) -> None:
    assert filetypes.sniff(data[:filetypes.HEAD]) == kind


def test_text_is_utf8_without_control_bytes() -> None:
    good = filetypes.TextCheck()
    text = "héllo wörld — 👍\r\n\tend\f".encode()
    for i in range(len(text)):  # split anywhere, even inside a character
        good.feed(text[i:i + 1])
    assert good.finish()
    for bad in (b"abc\x00def", b"\xff\xfe", b"caf\xc3", b"esc \x1b[31m"):
        check = filetypes.TextCheck()
        check.feed(bad)
        assert not check.finish(), bad


def test_a_name_may_not_claim_another_allowed_type() -> None:
    assert filetypes.name_contradicts("cat.png", filetypes.PDF)
    assert filetypes.name_contradicts("cat.JPG", filetypes.PNG)
    assert not filetypes.name_contradicts("cat.png", filetypes.PNG)
    assert not filetypes.name_contradicts("report.docx", filetypes.ZIP)  # unknown: free
    assert not filetypes.name_contradicts("notes.md", filetypes.TEXT)
    assert not filetypes.name_contradicts(".png", filetypes.PDF)  # a name, no extension
    assert not filetypes.name_contradicts("noext", filetypes.PDF)


@pytest.mark.parametrize(("header", "size", "span"), [
    (None, 10, None),
    ("bytes=0-3", 10, (0, 3)),
    ("bytes=4-", 10, (4, 9)),
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),
    ("bytes=5-100", 10, (5, 9)),
    ("bytes=9-9", 10, (9, 9)),
    ("bytes=0-1,4-5", 10, None),  # several: the whole file
    ("items=0-1", 10, None),  # another unit: ignored
])
def test_ranges(header: str | None, size: int, span: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == span


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=5-2", "bytes=-0", "bytes=-",
                                    "bytes=a-b", "bytes=1-2-3", "bytes=", "bytes=0-0"])
def test_bad_ranges_are_416(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 0 if header == "bytes=0-0" else 10)


def test_file_names_and_disposition() -> None:
    assert clean_name("C:\\Users\\me\\photo.png") == "photo.png"
    assert clean_name("../../etc/passwd") == "passwd"
    assert clean_name("a\x00b\r\nc.txt") == "abc.txt"
    assert clean_name("") == clean_name(None) == clean_name("...") == "file"
    assert len(clean_name("x" * 1000)) == 255
    assert content_disposition("report été.pdf", inline=False) == (
        "attachment; filename=\"report ete.pdf\"; "
        "filename*=UTF-8''report%20%C3%A9t%C3%A9.pdf")
    assert content_disposition('a"b;c.png', inline=True) == (
        "inline; filename=\"a_b_c.png\"; filename*=UTF-8''a%22b%3Bc.png")
    assert content_disposition("日本.txt", inline=False) == (
        "attachment; filename=\".txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt")
    headers = security_headers("x.pdf", inline=False)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert headers["Content-Disposition"].startswith("attachment;")


def _form(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    out = b"preamble\r\n"
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue".encode()


@pytest.mark.parametrize("step", [1, 7, 64, 100_000])
def test_multipart_finds_the_file_in_any_chunking(step: int) -> None:
    data = bytes(range(256)) * 20 + b"\r\n--notquite\r\n"
    body = _form("XyZ123", ("note", None, b"skip me"), ("file", "ph\u00f6to.png", data),
                 ("file", "second.png", b"ignored"))
    content_type = 'multipart/form-data; boundary="XyZ123"'
    parser = FilePart(boundary_of(content_type))
    got = b""
    for i in range(0, len(body), step):
        got += b"".join(parser.feed(body[i:i + step]))
        if parser.done:
            break
    parser.finish()
    assert got == data and parser.filename == "ph\u00f6to.png"


def test_multipart_refusals() -> None:
    with pytest.raises(ChatError):
        boundary_of("multipart/form-data")
    parser = FilePart(b"b")
    parser.feed(_form("b", ("other", None, b"x")))
    with pytest.raises(ChatError, match="no file field"):
        parser.finish()
    cut = FilePart(b"b")
    cut.feed(_form("b", ("file", "a.txt", b"x" * 100))[:180])
    with pytest.raises(ChatError, match="ended inside"):
        cut.finish()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_images_lose_their_exif_and_get_a_thumbnail(fmt: str) -> None:
    kind = {"PNG": filetypes.PNG, "JPEG": filetypes.JPEG, "WEBP": filetypes.WEBP}[fmt]
    raw = _image(fmt)
    assert b"SecretCam" in raw
    done = images.process(io.BytesIO(raw), kind, thumb_px=64, max_pixels=10**6)
    assert done.data is not None and b"SecretCam" not in done.data
    assert (done.width, done.height) == (300, 150)
    assert not Image.open(io.BytesIO(done.data)).getexif()
    thumb = Image.open(io.BytesIO(done.thumb))
    assert thumb.size == (64, 32) and done.thumb_type == filetypes.JPEG


def test_jpeg_orientation_is_applied_before_it_is_dropped() -> None:
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif.tobytes())
    done = images.process(out, filetypes.JPEG, thumb_px=64, max_pixels=10**6)
    assert (done.width, done.height) == (20, 40)
    assert done.data is not None and not Image.open(io.BytesIO(done.data)).getexif()


def test_transparent_images_get_png_thumbnails_and_gifs_are_kept() -> None:
    done = images.process(io.BytesIO(_image("PNG", "RGBA", exif=False)), filetypes.PNG,
                          thumb_px=32, max_pixels=10**6)
    assert done.thumb_type == filetypes.PNG
    gif = io.BytesIO()
    Image.new("P", (50, 50)).save(gif, "GIF")
    kept = images.process(gif, filetypes.GIF, thumb_px=32, max_pixels=10**6)
    assert kept.data is None and (kept.width, kept.height) == (50, 50)


def test_decompression_bombs_and_lies_are_refused() -> None:
    big = _image("PNG", size=(2000, 2000), exif=False)
    with pytest.raises(ChatError) as refused:
        images.process(io.BytesIO(big), filetypes.PNG, thumb_px=32, max_pixels=1000 * 1000)
    assert refused.value.code == "too_large"
    truncated = _image("PNG", exif=False)[:40]
    with pytest.raises(images.NotAnImage):
        images.process(io.BytesIO(truncated), filetypes.PNG, thumb_px=32, max_pixels=10**6)
    with pytest.raises(images.NotAnImage):  # PNG magic, JPEG body
        images.process(io.BytesIO(b"\x89PNG\r\n\x1a\n" + _image("JPEG")), filetypes.PNG,
                       thumb_px=32, max_pixels=10**6)
