"""A property-based run of the REST API against a live stack (issue 15 item 4):
schemathesis generates requests for every operation of the OpenAPI document
(chat_contract.specs), valid ones and invalid ones, sends them with a
user's token to a real gateway, and checks each answer: never a 5xx, a
status the document lists, the content type and body schema it declares.

Bounded and repeatable: ``EXAMPLES`` cases per operation and mode, a fixed
seed, no example database. What it found is fixed and has its own
regression tests (tests/unit/test_gateway_rest.py: a repeated query integer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from chat_contract import specs

from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e

EXAMPLES = 50
SEED = 20261207
# Operations that would end the test's own session (a random body cannot
# pass the current-password check, but a valid refresh token is not ours to burn).
SKIPPED = {("POST", "/v1/auth/password")}
# Not negative_data_rejection: the API tolerates unknown query parameters and
# reads an empty one as absent, which that check counts as accepting bad input.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, ignored_auth,
          missing_required_header, unsupported_method]


def operations() -> list[Any]:
    schema = schemathesis.openapi.from_dict(specs.openapi())
    found = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in SKIPPED:
            found.append(op)
    return found


def run_operation(op: Any, base_url: str, headers: dict[str, str],
                  mode: GenerationMode, failures: list[str]) -> int:
    calls = 0

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=op.as_strategy(generation_mode=mode), data=st.data())
    def check(case: Any, data: Any) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, headers=headers, timeout=20)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # every operation's findings, then fail
            failures.append(f"{op.method.upper()} {op.path} [{mode.value}] "
                            f"{response.status_code}: {str(exc)[:800]}\n  curl: "
                            f"{case.as_curl_command(headers)[:600]}")

    try:
        check()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
        assert mode == GenerationMode.NEGATIVE, op.path
    return calls


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gateway and every service, notify-service included (its routes
    would answer 503 without it); its webhook goes nowhere."""
    logs: Path = tmp_path_factory.mktemp("stack-logs")
    secret = logs / "webhook-secret"
    secret.write_text("fuzz-secret-0123456789abcdef\n")
    secret.chmod(0o600)
    s = Stack(e2e_nats, e2e_db, logs, gateways=1, notify_env={
        "CHAT_NOTIFY_WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "CHAT_NOTIFY_WEBHOOK_SECRET_FILE": str(secret)})
    try:
        s.start()
        yield s
    finally:
        s.stop()


def login(base_url: str) -> dict[str, str]:
    name, password = unique("fuzz"), "correct horse battery"
    with httpx.Client(base_url=base_url, timeout=10) as http:
        r = http.post("/v1/auth/register", json={"username": name, "password": password})
        assert r.status_code == 201, r.text
        r = http.post("/v1/auth/login", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.mark.timeout(600)
def test_rest_api_holds_its_schema_under_generated_requests(stack: Stack) -> None:
    base_url = stack.gateway(1).url
    headers = login(base_url)
    failures: list[str] = []
    started, calls = time.monotonic(), 0
    for op in operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += run_operation(op, base_url, headers, mode, failures)
    elapsed = time.monotonic() - started
    assert calls > 100, calls
    assert not failures, f"{len(failures)} findings in {calls} calls ({elapsed:.0f} s):\n" + \
        "\n".join(dict.fromkeys(failures))
    # The document the gateway serves is the one the run uses.
    served = httpx.get(f"{base_url}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == specs.openapi()
