"""chat_gateway.server_keys: the server API's keys file, constant-time checks, scopes."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from chat_contract.errors import ChatError, ErrorCode
from chat_gateway import server_keys
from chat_gateway.server_keys import ApiKeys, KeysFileError, bearer, new_key_line

SECRET = "s" * 24
KEYS = f"""
# a comment, then a blank line

full:{SECRET}:publish,disconnect,presence,rooms,users
reader:{"r" * 20}:presence, rooms
"""


def _code(keys: ApiKeys, presented: str | None, scope: str) -> ErrorCode:
    with pytest.raises(ChatError) as info:
        keys.authorize(presented, scope)
    return info.value.code


def test_a_key_with_the_scope_passes_and_every_other_is_refused() -> None:
    keys = ApiKeys.parse(KEYS)
    assert len(keys) == 2
    assert keys.authorize(f"full:{SECRET}", "users").id == "full"
    assert keys.authorize("reader:" + "r" * 20, "rooms").scopes == {"presence", "rooms"}
    for presented in (None, "", "full", f"full:{SECRET}x", f"full:{SECRET[:-1]}",
                      f"nobody:{SECRET}", f":{SECRET}", "x" * 10_000):
        assert _code(keys, presented, "rooms") == ErrorCode.UNAUTHORIZED, presented
    assert _code(keys, "reader:" + "r" * 20, "publish") == ErrorCode.FORBIDDEN


def test_secrets_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check goes through hmac.compare_digest, an unknown key id too
    (against a dummy), so neither answers sooner than a wrong secret."""
    seen: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(server_keys.hmac, "compare_digest", spy)
    keys = ApiKeys.parse(KEYS)
    _code(keys, f"nobody:{SECRET}", "rooms")
    _code(keys, "full:wrong", "rooms")
    keys.authorize(f"full:{SECRET}", "rooms")
    assert len(seen) == 3
    assert seen[0][1] != SECRET.encode() and len(seen[0][1]) >= len(SECRET)


@pytest.mark.parametrize("text, fault", [
    ("", "no keys"),
    ("# only a comment\n", "no keys"),
    ("full:short:rooms\n", "line 1: the secret"),
    (f"full:{SECRET}\n", "line 1: expected"),
    (f"bad id:{SECRET}:rooms\n", "line 1: the key id"),
    (f"full:{SECRET}:rooms,admin\n", "line 1: scopes"),
    (f"full:{SECRET}:\n", "line 1: scopes"),
    (f"a:{SECRET}:rooms\na:{SECRET}:rooms\n", "line 2: key id a appears twice"),
])
def test_a_bad_keys_file_names_the_line_never_the_secret(text: str, fault: str) -> None:
    with pytest.raises(KeysFileError) as info:
        ApiKeys.parse(text, "keys")
    assert fault in str(info.value)
    assert SECRET not in str(info.value)


def test_load_and_repr(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(new_key_line("local") + "\n")
    keys = ApiKeys.load(str(path))
    line = path.read_text().strip()
    key_id, secret, _ = line.split(":")
    key = keys.authorize(f"{key_id}:{secret}", "publish")
    assert secret not in repr(key) and set(server_keys.SCOPES) == key.scopes
    with pytest.raises(KeysFileError, match="cannot read"):
        ApiKeys.load(str(tmp_path / "missing"))


def test_bearer_header() -> None:
    assert bearer("Bearer a:b") == "a:b"
    assert bearer("apikey a:b") == "a:b"
    assert bearer("Basic YTpi") is None
    assert bearer(None) is None and bearer("Bearer ") is None
