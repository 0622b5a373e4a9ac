"""Uploaded images (Pillow): checked, stripped of metadata, measured, thumbnailed.

Runs in a worker thread (CPU-bound; Pillow releases the GIL while it codes).

- The file must open as the format its bytes announced (else 415, as any
  type not allowed).
- Decompression bombs: the pixel count is checked from the header before
  anything is decoded (``CHAT_ATTACHMENT_MAX_PIXELS``, beyond → 413), and
  Pillow's own guard (``MAX_IMAGE_PIXELS``) is set to the same bound.
- PNG, JPEG and WebP are re-encoded from their pixels without metadata: EXIF
  (camera, GPS position, time), XMP and text chunks are gone; a JPEG's EXIF
  orientation is applied first so the picture still stands the right way up.
  JPEGs keep their quantisation tables (``quality="keep"``) when not rotated.
  Animated WebPs keep their frames. GIFs are stored as sent (the format has
  no EXIF; re-encoding would lose colours).
- The thumbnail fits in ``CHAT_ATTACHMENT_THUMB_PX`` square (aspect kept,
  never enlarged): PNG when the image has transparency, else JPEG.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageOps

from chat_contract.errors import ChatError, ErrorCode

from . import filetypes

_ORIENTATION = 0x0112  # the EXIF tag
_FORMATS = {filetypes.PNG: "PNG", filetypes.JPEG: "JPEG", filetypes.GIF: "GIF",
            filetypes.WEBP: "WEBP"}


class NotAnImage(ValueError):
    """The bytes announced an image that Pillow cannot read as that format."""


@dataclass
class Processed:
    data: bytes | None  # the re-encoded file; None: store the upload as it is
    width: int
    height: int
    thumb: bytes
    thumb_type: str


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _thumbnail(img: Image.Image, px: int) -> tuple[bytes, str]:
    thumb = img.copy()
    thumb.thumbnail((px, px))
    out = io.BytesIO()
    if _has_alpha(thumb):
        thumb.convert("RGBA").save(out, "PNG", optimize=True)
        return out.getvalue(), filetypes.PNG
    thumb.convert("RGB").save(out, "JPEG", quality=80)
    return out.getvalue(), filetypes.JPEG


def process(src: IO[bytes], kind: str, *, thumb_px: int, max_pixels: int) -> Processed:
    """Check and clean the image in ``src`` (sniffed as ``kind``)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    src.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(src, formats=[_FORMATS[kind]])
            width, height = img.size
            if width * height > max_pixels:
                raise Image.DecompressionBombError("too many pixels")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ChatError(ErrorCode.TOO_LARGE,
                        f"image exceeds {max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise NotAnImage(str(exc)) from None
    if kind == filetypes.GIF:
        return Processed(None, width, height, *_thumbnail(img.convert("RGBA"), thumb_px))
    frames = getattr(img, "n_frames", 1)
    out = io.BytesIO()
    if kind == filetypes.JPEG:
        if img.getexif().get(_ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
            upright = ImageOps.exif_transpose(img)
            upright.info = {}
            upright.save(out, "JPEG", quality=90)
            img = upright
        else:
            img.info = {}
            img.save(out, "JPEG", quality="keep")
    elif kind == filetypes.WEBP and frames > 1:
        img.info = {k: v for k, v in img.info.items() if k in ("loop", "duration", "background")}
        img.save(out, "WEBP", save_all=True, lossless=False, quality=90)
    elif kind == filetypes.WEBP:
        img.info = {}
        img.save(out, "WEBP", quality=90)
    else:
        img.info = {k: v for k, v in img.info.items() if k == "transparency"}
        img.save(out, "PNG")
    width, height = img.size
    return Processed(out.getvalue(), width, height, *_thumbnail(img, thumb_px))
