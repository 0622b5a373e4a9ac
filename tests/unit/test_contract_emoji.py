"""chat_contract.emoji: what one emoji sequence is (the ``react`` frame, docs/protocol.md §3.3)."""

from __future__ import annotations

import pytest

from chat_contract import limits
from chat_contract.emoji import check_emoji, is_emoji
from chat_contract.errors import ChatError, ErrorCode

ONE = [
    "👍",  # a plain pictograph
    "❤",  # a BMP symbol without a variation selector
    "❤️",  # ... and with VS16
    "☺︎",  # text presentation (VS15)
    "👍🏽",  # a skin tone
    "👩‍💻",  # a ZWJ sequence
    "👨‍👩‍👧‍👦",  # a long ZWJ family
    "🧑🏿‍🤝‍🧑🏻",  # ZWJ with skin tones on two elements
    "🏳️‍🌈",  # flag + VS16 + ZWJ + pictograph
    "🇫🇷",  # regional indicators: a flag
    "1️⃣",  # keycap with VS16
    "#⃣",  # keycap without
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿",  # a tag sequence (Scotland)
    "©",
    "🫠",  # Unicode 14: a range, not a list, decides
]

NOT_ONE = [
    "",
    "a",
    "ok",
    "1",  # a digit without the keycap
    "👍👍",  # two emoji side by side
    "👍 ",
    " 👍",
    "🏽",  # a lone skin tone
    "\u200d",  # a lone ZWJ
    "👩\u200d",  # a ZWJ with nothing after it
    "\u200d👩",
    "👍🏽🏽",  # two skin tones
    "👍\ufe0f\ufe0f",
    "🇫",  # half a flag
    "🇫🇷🇩",  # a flag and a half
    "1\u20e3\u20e3",
    "🏴\U000e0067\U000e0062",  # a tag sequence without its cancel tag
    "<script>",
    "\x00",
    "é",
    "😀\u0301",  # a combining mark
]


@pytest.mark.parametrize("value", ONE)
def test_one_emoji_sequence_is_accepted(value: str) -> None:
    assert is_emoji(value)
    assert check_emoji(value) == value


@pytest.mark.parametrize("value", NOT_ONE)
def test_anything_else_is_bad_request(value: str) -> None:
    assert not is_emoji(value)
    with pytest.raises(ChatError) as caught:
        check_emoji(value)
    assert caught.value.code == ErrorCode.BAD_REQUEST


def test_the_length_bound_counts_code_points() -> None:
    # 16 women joined by ZWJ: one sequence of 31 code points.
    inside = "\u200d".join(["👩"] * 16)  # 31 code points
    assert len(inside) == 31 and is_emoji(inside)
    longer = "\u200d".join(["👩"] * 17)  # 33
    assert len(longer) > limits.EMOJI_MAX_CHARS and not is_emoji(longer)
