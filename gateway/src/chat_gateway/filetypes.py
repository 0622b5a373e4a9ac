"""What an uploaded file is, decided from its bytes (docs/protocol.md §11
"Attachments"), never from its name or the client's Content-Type.

The allow-list: PNG, JPEG, GIF, WebP (images: re-encoded, thumbnailed),
PDF, ZIP, and plain text (valid UTF-8 without control characters other than
tab, line feed, form feed and carriage return). Anything else — executables,
HTML, SVG, scripts, archives of other kinds — is refused (415), and so is a
file whose name's extension names another allowed type (a PDF named
``.png``).
"""

from __future__ import annotations

import codecs

PNG = "image/png"
JPEG = "image/jpeg"
GIF = "image/gif"
WEBP = "image/webp"
PDF = "application/pdf"
ZIP = "application/zip"
TEXT = "text/plain; charset=utf-8"

IMAGES = frozenset({PNG, JPEG, GIF, WEBP})
ALLOWED = (PNG, JPEG, GIF, WEBP, PDF, ZIP, TEXT)
# The first bytes a sniff needs (the longest signature, WebP's, is 12).
HEAD = 16

# File name extensions that name an allowed type: a name claiming another
# allowed type than the bytes are is refused (a PDF named .png), so that the
# name a receiver sees never lies about what opens. Other extensions (.docx,
# a ZIP; .csv, text) are free.
_EXTENSIONS = {"png": PNG, "jpg": JPEG, "jpeg": JPEG, "jpe": JPEG, "gif": GIF, "webp": WEBP,
               "pdf": PDF, "zip": ZIP, "txt": TEXT}

# Bytes that never occur in a text file: C0 controls but \t \n \f \r, and DEL.
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"


def sniff(head: bytes) -> str | None:
    """The binary type the first bytes announce, or None (maybe text: :class:`TextCheck`)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # an archive, or an empty one
        return ZIP
    return None


def name_contradicts(name: str, kind: str) -> bool:
    """Whether ``name``'s extension names an allowed type other than ``kind``."""
    stem, dot, ext = name.rpartition(".")
    claimed = _EXTENSIONS.get(ext.lower()) if dot and stem else None
    return claimed is not None and claimed != kind


class TextCheck:
    """Fed a file's chunks in order: is it all UTF-8 text without control bytes?"""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.ok = True

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if not self.ok:
            return
        if chunk.translate(None, _CONTROL) != chunk:
            self.ok = False
            return
        try:
            self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            self.ok = False

    def finish(self) -> bool:
        self.feed(b"", final=True)
        return self.ok
