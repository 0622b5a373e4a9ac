"""Is a string one emoji? The ``react`` frame's rule (docs/protocol.md §3.3).

A reaction is a bounded string (``limits.EMOJI_MAX_CHARS`` code points) that
holds exactly one emoji sequence in the sense of Unicode TS #51, checked by
code point ranges rather than against the full emoji list, so an emoji newer
than this table's data still passes when it is built the usual way:

- a flag: two regional indicators (U+1F1E6–U+1F1FF);
- a keycap: ``0-9``, ``#`` or ``*``, an optional U+FE0F, then U+20E3;
- a tag sequence: U+1F3F4 (black flag), tags U+E0020–U+E007E, U+E007F (cancel tag);
- otherwise elements joined by ZWJ (U+200D), each a pictographic code point
  (:data:`_PICTOGRAPHIC`, Unicode's Extended_Pictographic ranges) with an
  optional variation selector (U+FE0E/U+FE0F) and an optional skin tone
  modifier (U+1F3FB–U+1F3FF), in either order.

Anything else — letters, two emoji side by side, a lone modifier or ZWJ,
control characters — is not one emoji. Pure, no I/O: the gateway checks a
frame with it and history-service checks a stored record with it.
"""

from __future__ import annotations

from bisect import bisect_right

from . import limits
from .errors import ChatError, ErrorCode

ZWJ = 0x200D
VS15, VS16 = 0xFE0E, 0xFE0F
KEYCAP = 0x20E3
BLACK_FLAG = 0x1F3F4
CANCEL_TAG = 0xE007F
_TAGS = range(0xE0020, 0xE007F)
_REGIONAL = range(0x1F1E6, 0x1F200)
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_KEYCAP_BASES = frozenset(map(ord, "0123456789#*"))

# Extended_Pictographic (emoji-data.txt, Unicode 15.1), merged into ranges,
# without the regional indicators and skin tone modifiers (never bases here).
_RANGES: tuple[tuple[int, int], ...] = (
    (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049),
    (0x2122, 0x2122), (0x2139, 0x2139), (0x2194, 0x2199), (0x21A9, 0x21AA),
    (0x231A, 0x231B), (0x2328, 0x2328), (0x2388, 0x2388), (0x23CF, 0x23CF),
    (0x23E9, 0x23F3), (0x23F8, 0x23FA), (0x24C2, 0x24C2), (0x25AA, 0x25AB),
    (0x25B6, 0x25B6), (0x25C0, 0x25C0), (0x25FB, 0x25FE), (0x2600, 0x2605),
    (0x2607, 0x2612), (0x2614, 0x2685), (0x2690, 0x2705), (0x2708, 0x2712),
    (0x2714, 0x2714), (0x2716, 0x2716), (0x271D, 0x271D), (0x2721, 0x2721),
    (0x2728, 0x2728), (0x2733, 0x2734), (0x2744, 0x2744), (0x2747, 0x2747),
    (0x274C, 0x274C), (0x274E, 0x274E), (0x2753, 0x2755), (0x2757, 0x2757),
    (0x2763, 0x2767), (0x2795, 0x2797), (0x27A1, 0x27A1), (0x27B0, 0x27B0),
    (0x27BF, 0x27BF), (0x2934, 0x2935), (0x2B05, 0x2B07), (0x2B1B, 0x2B1C),
    (0x2B50, 0x2B50), (0x2B55, 0x2B55), (0x3030, 0x3030), (0x303D, 0x303D),
    (0x3297, 0x3297), (0x3299, 0x3299),
    (0x1F000, 0x1F0FF), (0x1F10D, 0x1F10F), (0x1F12F, 0x1F12F), (0x1F16C, 0x1F171),
    (0x1F17E, 0x1F17F), (0x1F18E, 0x1F18E), (0x1F191, 0x1F19A), (0x1F1AD, 0x1F1E5),
    (0x1F201, 0x1F20F), (0x1F21A, 0x1F21A), (0x1F22F, 0x1F22F), (0x1F232, 0x1F23A),
    (0x1F23C, 0x1F23F), (0x1F249, 0x1F3FA), (0x1F400, 0x1F53D), (0x1F546, 0x1F64F),
    (0x1F680, 0x1F6FF), (0x1F774, 0x1F77F), (0x1F7D5, 0x1F7FF), (0x1F80C, 0x1F80F),
    (0x1F848, 0x1F84F), (0x1F85A, 0x1F85F), (0x1F888, 0x1F88F), (0x1F8AE, 0x1F8FF),
    (0x1F90C, 0x1F93A), (0x1F93C, 0x1F945), (0x1F947, 0x1FAFF), (0x1FC00, 0x1FFFD),
)
_STARTS = tuple(lo for lo, _ in _RANGES)


def is_pictographic(cp: int) -> bool:
    """An emoji base code point (Extended_Pictographic, less modifiers and flags' halves)."""
    i = bisect_right(_STARTS, cp) - 1
    return i >= 0 and cp <= _RANGES[i][1]


def is_emoji(value: str) -> bool:
    """True if ``value`` is exactly one emoji sequence of at most
    ``limits.EMOJI_MAX_CHARS`` code points (see the module docstring)."""
    if not value or len(value) > limits.EMOJI_MAX_CHARS:
        return False
    cps = [ord(c) for c in value]
    first = cps[0]
    if first in _REGIONAL:
        return len(cps) == 2 and cps[1] in _REGIONAL
    if first in _KEYCAP_BASES:
        return cps[1:] in ([KEYCAP], [VS16, KEYCAP])
    if first == BLACK_FLAG and len(cps) > 2 and cps[1] in _TAGS:
        return cps[-1] == CANCEL_TAG and all(cp in _TAGS for cp in cps[1:-1])
    return _zwj_sequence(cps)


def _zwj_sequence(cps: list[int]) -> bool:
    """Elements joined by ZWJ; each a pictographic base with at most one
    variation selector and one skin tone modifier after it."""
    i, n = 0, len(cps)
    while True:
        if i >= n or not is_pictographic(cps[i]):
            return False
        i += 1
        vs = tone = False
        while i < n and cps[i] != ZWJ:
            cp = cps[i]
            if cp in (VS15, VS16) and not vs:
                vs = True
            elif cp in _SKIN_TONES and not tone:
                tone = True
            else:
                return False
            i += 1
        if i == n:
            return True
        i += 1  # the ZWJ: another element must follow


def check_emoji(value: str) -> str:
    """``value`` if it is one emoji (:func:`is_emoji`), else ``bad_request``."""
    if not is_emoji(value):
        raise ChatError(ErrorCode.BAD_REQUEST,
                        f"emoji must be one emoji of at most {limits.EMOJI_MAX_CHARS} characters")
    return value
