"""chat_gateway.rest and rest_rooms: the checks a REST route makes without a
round trip (query integers, bounds, flags, user references)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from chat_contract.errors import ChatError, ErrorCode
from chat_gateway.rest import int_param
from chat_gateway.rest_rooms import _bounded, _flag, _user_ref


def _request(query: str) -> Request:
    return Request({"type": "http", "query_string": query.encode(), "headers": []})


@pytest.mark.parametrize("raw", ["x", "1.5", " 7", "+7", "1_0", "-1", "99999999999999999999"])
def test_int_param_refuses_non_plain_integers(raw: str) -> None:
    with pytest.raises(ChatError) as exc:
        int_param(_request(f"limit={raw}"), "limit", 5)
    assert exc.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("query", ["before=x&before=", "before=1&before=2", "before=&before=3"])
def test_int_param_refuses_a_repeated_parameter(query: str) -> None:
    """Found by the schemathesis run (tests/e2e/test_rest_schemathesis.py): the
    last of several values was used, so ``?before=false&before=`` passed as
    no bound at all."""
    with pytest.raises(ChatError) as exc:
        int_param(_request(query), "before", None)
    assert exc.value.code == ErrorCode.BAD_REQUEST and "more than once" in exc.value.message


def test_bounded_and_flag() -> None:
    assert _bounded(_request(""), "limit", 20, 1, 50) == 20
    assert _bounded(_request("limit=50"), "limit", 20, 1, 50) == 50
    for bad in ("limit=0", "limit=51"):
        with pytest.raises(ChatError):
            _bounded(_request(bad), "limit", 20, 1, 50)
    assert _flag(_request("public=1"), "public") and not _flag(_request(""), "public")
    with pytest.raises(ChatError):
        _flag(_request("public=maybe"), "public")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "u_1;drop", "ü", "a/b"])
def test_user_refs_are_one_plain_token(bad: str) -> None:
    with pytest.raises(ChatError):
        _user_ref(bad)
    assert _user_ref("u_Abc-1.x") == "u_Abc-1.x"
