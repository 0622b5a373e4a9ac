"""A push parser for the one file of a ``multipart/form-data`` upload (no I/O).

``POST /v1/rooms/{id}/attachments`` takes the field ``file``; the body is
fed in as it arrives and the file's bytes come out as they are found, so
nothing but a delimiter's length is held back (the caller counts them and
stops reading at the size limit). Other fields are skipped; the first
``file`` part wins.
"""

from __future__ import annotations

import email.message
import re

from chat_contract.errors import ChatError, ErrorCode

# A part's header block is small; beyond this the body is not a form we take.
HEADERS_MAX = 16 * 1024
_BOUNDARY = re.compile(r"""boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))""", re.IGNORECASE)


def _bad(message: str) -> ChatError:
    return ChatError(ErrorCode.BAD_REQUEST, message)


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type (bad_request if none)."""
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise _bad("multipart body without a boundary")
    return (m.group(1) or m.group(2)).encode("latin-1")


class FilePart:
    """Feed the body with :meth:`feed`; it returns the file's bytes found so far.
    ``filename`` is set once the part's headers are read; ``done`` once it ended."""

    def __init__(self, boundary: bytes, field: str = "file") -> None:
        self._delimiter = b"\r\n--" + boundary
        self._field = field
        # The first boundary has no CRLF before it: pretend it had one.
        self._buf = bytearray(b"\r\n")
        self._state = "skip"  # skip (a part's body or the preamble), headers, file, end
        self.filename: str | None = None
        self.found = False
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while not self.done:
            if self._state in ("skip", "file"):
                at = self._buf.find(self._delimiter)
                if at < 0:
                    keep = len(self._delimiter) - 1
                    if self._state == "file" and len(self._buf) > keep:
                        out.append(bytes(self._buf[:-keep]))
                        del self._buf[:-keep]
                    elif self._state == "skip" and len(self._buf) > keep:
                        del self._buf[:-keep]
                    return out
                if self._state == "file":
                    if at:
                        out.append(bytes(self._buf[:at]))
                    self.done = True
                    return out
                del self._buf[:at + len(self._delimiter)]
                self._state = "after"
            elif self._state == "after":
                if len(self._buf) < 2:
                    return out
                if self._buf[:2] == b"--":
                    self._state = "end"
                    return out
                if self._buf[:2] != b"\r\n":
                    raise _bad("malformed multipart body")
                del self._buf[:2]
                self._state = "headers"
            elif self._state == "headers":
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > HEADERS_MAX:
                        raise _bad("multipart part headers too large")
                    return out
                head = bytes(self._buf[:end]).decode("utf-8", "replace")
                del self._buf[:end + 4]
                self._state = self._part(head)
            else:  # end: the epilogue is ignored
                self._buf.clear()
                return out
        return out

    def _part(self, head: str) -> str:
        msg = email.message.Message()
        for line in head.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                msg[name.strip()] = value.strip()
        if msg.get_param("name", header="content-disposition") != self._field:
            return "skip"
        self.found = True
        self.filename = msg.get_filename()
        return "file"

    def finish(self) -> None:
        """The body ended: bad_request unless the file part was complete."""
        if not self.found:
            raise _bad("no file field in the multipart body")
        if not self.done:
            raise _bad("multipart body ended inside the file")
