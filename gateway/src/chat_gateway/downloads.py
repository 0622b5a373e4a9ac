"""HTTP details of attachment downloads, without I/O: file names, the
``Range`` header, and the headers every download carries
(docs/protocol.md §5, §11 "Attachments").

- ``Content-Disposition``: ``inline`` for images, ``attachment`` for the rest,
  with an ASCII ``filename`` fallback and the real name as RFC 8187
  ``filename*=UTF-8''…``.
- ``X-Content-Type-Options: nosniff`` always; a ``Content-Security-Policy``
  of ``default-src 'none'; sandbox`` on everything (an image needs nothing
  either), so a file opened in a tab can neither run script nor load
  anything.
- Ranges: one ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``; a range that
  cannot be satisfied, or a malformed ``bytes=`` spec → 416 with
  ``Content-Range: bytes */<size>``; several ranges, or another unit, are
  ignored (the whole file, 200), as RFC 9110 allows.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from chat_contract import limits

_SPEC = re.compile(r"(\d*)-(\d*)")
# Characters kept in the ASCII fallback name; everything else becomes "_".
_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


class Unsatisfiable(ValueError):
    """416: the range asks for nothing the file has, or is malformed."""


def clean_name(raw: str | None) -> str:
    """A stored file name: the last path component, no control characters,
    at most ATTACHMENT_NAME_MAX code points; ``file`` when nothing is left."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().strip(".")
    return name[:limits.ATTACHMENT_NAME_MAX] or "file"


def content_disposition(name: str, inline: bool) -> str:
    fallback = _ASCII_SAFE.sub("_", unicodedata.normalize("NFKD", name)
                               .encode("ascii", "ignore").decode()) or "file"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for, or None for the whole file."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None  # several ranges: served whole
    m = _SPEC.fullmatch(spec)
    if m is None or (not m.group(1) and not m.group(2)):
        raise Unsatisfiable(spec)
    first, last = m.group(1), m.group(2)
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable(spec)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if end < start or start >= size:
        raise Unsatisfiable(spec)
    return start, min(end, size - 1)


def security_headers(name: str, inline: bool) -> dict[str, str]:
    return {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": content_disposition(name, inline),
        "Cross-Origin-Resource-Policy": "same-origin",
        "Accept-Ranges": "bytes",
        # Immutable (an id's bytes never change), but only for this user.
        "Cache-Control": "private, max-age=31536000, immutable",
    }
