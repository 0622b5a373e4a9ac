"""Pure pieces of the gateway: the token bucket and the pre-built frames."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from chat_gateway.limits import TokenBucket
from chat_gateway.wsframe import text_frame


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert all(bucket.take(now=0.0) for _ in range(20))
    assert not bucket.take(now=0.0)
    assert bucket.retry_after() == pytest.approx(0.1)
    assert bucket.take(now=0.1) and not bucket.take(now=0.1)
    assert sum(bucket.take(now=100.0) for _ in range(30)) == 20  # refills to the burst only


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_parses_as_a_websocket_frame(size: int) -> None:
    payload = ("x" * size).encode()
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload
