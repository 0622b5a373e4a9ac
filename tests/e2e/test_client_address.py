"""The client address the gateway counts (login and registration throttles,
audit lines, connection caps) cannot be forged by a client: X-Forwarded-For
is believed only from CHAT_GATEWAY_TRUSTED_PROXIES (uvicorn's proxy headers).
Here the trusted proxy is some other host, so the test client (127.0.0.1)
is an ordinary client. (That a trusted proxy's X-Forwarded-For is used is
shown by test_limits, whose client is 127.0.0.1, the default trusted proxy.)
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .client import TIMEOUT
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e

ENV = {
    "CHAT_GATEWAY_TRUSTED_PROXIES": "192.0.2.1",
    "CHAT_AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS": "3",
    "CHAT_AUTH_REGISTER_PER_ADDRESS": "2",
}


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    s = Stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("client-address-logs"), gateways=1,
              extra_env=ENV)
    try:
        s.start()
        yield s
    finally:
        s.stop()


async def test_a_forged_x_forwarded_for_does_not_change_the_counted_address(
        stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway(1).url, timeout=TIMEOUT) as http:
        for i in range(3):  # each "from" a new address
            r = await http.post("/v1/auth/login",
                                headers={"X-Forwarded-For": f"198.51.100.{i}"},
                                json={"username": unique("ghost"), "password": "whatever1"})
            assert r.status_code == 401, r.text
        # All three were counted for 127.0.0.1: it is now refused, header or not.
        for headers in ({}, {"X-Forwarded-For": "203.0.113.5"}):
            r = await http.post("/v1/auth/login", headers=headers,
                                json={"username": unique("ghost"), "password": "whatever1"})
            assert r.status_code == 429, r.text
            assert int(r.headers["Retry-After"]) >= 1


async def test_registrations_per_address_answer_429_with_retry_after(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway(1).url, timeout=TIMEOUT) as http:
        statuses = []
        for i in range(3):
            r = await http.post("/v1/auth/register",
                                headers={"X-Forwarded-For": f"198.51.100.{i}"},
                                json={"username": unique("reg"), "password": "long enough"})
            statuses.append(r.status_code)
        assert statuses == [201, 201, 429]
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 600
