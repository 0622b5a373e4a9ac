"""The machine-readable specs (chat_contract.specs): docs/openapi.json and
docs/asyncapi.json are what the contract renders, every published pattern
is JavaScript, the REST table is the gateway's routes both ways, typed acks
and the ErrorCode enum leave the wire as it was, and the gateway serves the
documents (chat_gateway.apidocs).

After a change of the contract: ``.venv/bin/python -m chat_contract.specs``.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from chat_contract import acks, restapi, specs
from chat_contract.errors import ErrorCode
from chat_contract.events import Error, Message, User, decode_event, encode, encode_ack
from chat_contract.rooms import ROOM_ID_PATTERN, is_valid_room_id

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GATEWAY = ROOT / "gateway" / "src" / "chat_gateway"
# Served by the gateway but no REST operation: the page, its JavaScript client
# (clients/js) and the socket (AsyncAPI).
NOT_REST = {("GET", "/"), ("GET", "/chat-client.js"), ("GET", "/ws")}


def documents() -> dict[str, dict[str, Any]]:
    return {name: build() for name, build in specs.FILES.items()}


def test_committed_specs_are_current() -> None:
    for name, doc in documents().items():
        committed = (DOCS / name).read_text(encoding="utf-8")
        assert committed == specs.render(doc), (
            f"docs/{name} is stale: run .venv/bin/python -m chat_contract.specs")
    assert specs.main(["--check", str(DOCS)]) == 0


def test_documents_declare_their_versions() -> None:
    docs = documents()
    assert docs["openapi.json"]["openapi"] == "3.1.0"
    assert docs["asyncapi.json"]["asyncapi"] == "3.0.0"


def all_refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= all_refs(value)
        return found
    if isinstance(node, list):
        return set().union(*map(all_refs, node)) if node else set()
    return set()


def test_every_ref_resolves() -> None:
    for name, doc in documents().items():
        for ref in all_refs(doc):
            assert ref.startswith("#/"), ref
            node: Any = doc
            for part in ref[2:].split("/"):
                assert isinstance(node, dict) and part in node, f"{name}: {ref} dangles"
                node = node[part]


# --- patterns: JavaScript reads them as Python does ---------------------------------

PYTHON_ONLY = re.compile(r"\\[AZz]|\(\?P[<=]|\(\?[aiLmsux-]+[:)]|[*+?}]\+|\(\?>")


def published_patterns() -> list[str]:
    found: set[str] = set()
    for doc in documents().values():
        found |= set(specs.patterns(doc))
    return sorted(found)


def test_published_patterns_use_no_python_only_syntax() -> None:
    patterns = published_patterns()
    assert ROOM_ID_PATTERN in patterns
    for pattern in patterns:
        assert not PYTHON_ONLY.search(pattern), f"Python-only syntax in {pattern!r}"
        re.compile(pattern)


def node() -> str:
    found = shutil.which("node") or shutil.which("nodejs")
    if found is None:
        pytest.fail("node is not installed (.ci/run installs Debian's nodejs)")
    return found


ROOM_SAMPLES = ["lobby", "a", "a" * 64, "a" * 65, "", "abc\n", "\nabc", "a b", "a.b",
                "über", "x-y_Z9", "a\u2028", "a/b", "ab\r"]


def test_patterns_compile_in_javascript_and_match_as_in_python() -> None:
    """Each pattern compiles with ``new RegExp(p, 'u')``, and the room id
    pattern accepts and refuses the same samples in both languages."""
    script = r"""
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = {compiled: {}, room: []};
for (const p of input.patterns) {
  try { new RegExp(p, 'u'); out.compiled[p] = null; } catch (e) { out.compiled[p] = String(e); }
}
const room = new RegExp(input.room, 'u');
for (const s of input.samples) out.room.push(room.test(s));
process.stdout.write(JSON.stringify(out));
"""
    payload = json.dumps({"patterns": published_patterns(), "room": ROOM_ID_PATTERN,
                          "samples": ROOM_SAMPLES})
    done = subprocess.run([node(), "-e", script], input=payload, capture_output=True,
                          text=True, timeout=30, check=True)
    result = json.loads(done.stdout)
    assert {p: e for p, e in result["compiled"].items() if e is not None} == {}
    python = [re.search(ROOM_ID_PATTERN, s) is not None for s in ROOM_SAMPLES]
    assert result["room"] == python, list(zip(ROOM_SAMPLES, result["room"], python, strict=True))
    assert python == [is_valid_room_id(s) for s in ROOM_SAMPLES]
    accepted = [s for s, ok in zip(ROOM_SAMPLES, python, strict=True) if ok]
    assert accepted == ["lobby", "a", "a" * 64, "x-y_Z9"]


# --- the REST table is the gateway's routes -----------------------------------------


def gateway_routes() -> set[tuple[str, str]]:
    """(method, path) of every route a gateway serves on its public port: every
    ``routes(...)`` function of chat_gateway's modules, called with stand-ins
    (they only close over them), the process routes of chat_kit.http, and
    every route written out in app.py."""
    import importlib

    from starlette.routing import Route, WebSocketRoute

    from chat_kit.http import health_routes

    found: set[tuple[str, str]] = set()
    built: list[Any] = list(health_routes(lambda: True))
    for path in sorted(GATEWAY.glob("*.py")):
        if path.stem in ("server_api", "main"):  # the internal listener: not public
            continue
        module = importlib.import_module(f"chat_gateway.{path.stem}")
        make = getattr(module, "routes", None)
        if inspect.isfunction(make) and make.__module__ == module.__name__:
            built += make(*[object()] * len(inspect.signature(make).parameters))
    for route in built:
        if isinstance(route, WebSocketRoute):
            found.add(("GET", route.path))
        elif isinstance(route, Route):
            found |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    app_source = (GATEWAY / "app.py").read_text()
    found |= {("GET", p) for p in re.findall(r'WebSocketRoute\("(/[^"]*)"', app_source)}
    for path, methods in re.findall(r'\bRoute\("(/[^"]*)",[^)]*methods=\[([^\]]*)\]',
                                    app_source):
        found |= {(m, path) for m in re.findall(r'"([A-Z]+)"', methods)}
    return found


def test_rest_table_is_the_gateways_routes_both_ways() -> None:
    declared = {(op.method, op.path) for op in restapi.OPERATIONS}
    assert len(declared) == len(restapi.OPERATIONS), "an operation declared twice"
    served = gateway_routes() - NOT_REST
    assert served - declared == set(), "routes missing from chat_contract.restapi"
    assert declared - served == set(), "operations the gateway does not serve"
    assert len({op.id for op in restapi.OPERATIONS}) == len(restapi.OPERATIONS)


def shape(struct: type[Any]) -> dict[str, bool]:
    """Field name → required: the spec's bodies may carry the bounds the
    services enforce, the gateway's own structs only what it checks itself."""
    return {f.encode_name: f.required for f in msgspec.structs.fields(struct)}


def test_request_bodies_are_the_ones_the_gateway_decodes() -> None:
    from chat_gateway import rest, rest_rooms

    pairs = [(rest._Login, restapi.Login), (rest._Login, restapi.Register),
             (rest._Refresh, restapi.Refresh), (rest._Password, restapi.PasswordBody),
             (rest_rooms._NewRoom, restapi.NewRoom), (rest_rooms._UserBody, restapi.UserBody),
             (rest_rooms._LevelBody, restapi.LevelBody), (rest_rooms._ReadBody, restapi.ReadBody)]
    for served, declared in pairs:
        assert shape(served) == shape(declared), declared.__name__
    # What the gateway bounds itself, the spec bounds alike.
    for served, declared in ((rest_rooms._LevelBody, restapi.LevelBody),
                             (rest_rooms._ReadBody, restapi.ReadBody)):
        assert msgspec.json.schema(served)["$defs"][served.__name__]["properties"] == \
            msgspec.json.schema(declared)["$defs"][declared.__name__]["properties"]


def test_every_operation_documents_its_refusals() -> None:
    doc = specs.openapi()
    for op in restapi.OPERATIONS:
        responses = doc["paths"][op.path][op.method.lower()]["responses"]
        if op.tag == "operations":
            continue
        for status in ("400", "429", "500", "503", *(str(s) for s in op.errors)):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"}, (op.id, status)
        if op.auth:
            assert "401" in responses and doc["paths"][op.path][op.method.lower()][
                "security"] == [{"bearer": []}]


# --- typed acks and the ErrorCode enum: the wire is unchanged -----------------------


MESSAGE = Message(room="r", msg_id="m1", seq=3, prev_seq=2, sender=User(id="u", name="U"),
                  ts="2026-01-01T00:00:00Z", text="hi")


@pytest.mark.parametrize(("ack", "fields"), [
    (acks.EmptyAck(id="1"), {}),
    (acks.JoinAck(id="1", room="r", members=[User(id="u", name="U")], last_seq=0, missed=[]),
     {"room": "r", "members": [User(id="u", name="U")], "last_seq": 0, "missed": []}),
    (acks.JoinAck(id="1", room="r", members=[], last_seq=3, missed=[MESSAGE],
                  missed_truncated=True),
     {"room": "r", "members": [], "last_seq": 3, "missed": [MESSAGE],
      "missed_truncated": True}),
    (acks.SendAck(id="1", msg_id="m1", seq=0, ts="t"), {"msg_id": "m1", "seq": 0, "ts": "t"}),
    (acks.SeqAck(id="1", seq=0), {"seq": 0}),
    (acks.HistoryAck(id="1", messages=[MESSAGE], has_more=False),
     {"messages": [MESSAGE], "has_more": False}),
    (acks.PresenceAck(id="1", members=[]), {"members": []}),
])
def test_typed_acks_are_the_bytes_the_gateway_writes(ack: acks.Ack,
                                                     fields: dict[str, Any]) -> None:
    wire = encode_ack("1", fields)
    assert acks.encode(ack) == wire
    assert msgspec.json.decode(wire, type=type(ack)) == ack


def test_every_acked_frame_type_has_its_ack() -> None:
    from chat_contract import frames

    tags = {str(t.__struct_config__.tag) for t in frames.ClientFrame.__args__}  # type: ignore[attr-defined]
    assert set(acks.BY_FRAME) == tags - {"ping"}


def test_error_code_is_an_enum_on_the_same_wire() -> None:
    for code in ErrorCode:
        wire = encode(Error(code=code, message="m", id="r"))
        assert json.loads(wire) == {"type": "error", "code": code.value, "message": "m",
                                    "id": "r"}
        decoded = decode_event(wire)
        assert isinstance(decoded, Error) and decoded.code is code
    schema = specs.asyncapi()["components"]["schemas"]
    codes = schema[schema["Error"]["properties"]["code"]["$ref"].rsplit("/", 1)[-1]]
    assert sorted(codes["enum"]) == sorted(c.value for c in ErrorCode)


# --- served by the gateway ------------------------------------------------------------


async def test_gateway_serves_the_specs_and_a_page() -> None:
    from chat_gateway import apidocs

    transport = httpx.ASGITransport(app=Starlette(routes=apidocs.routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        await check_served(client)


async def check_served(client: httpx.AsyncClient) -> None:
    for name in specs.FILES:
        response = await client.get(f"/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.text == (DOCS / name).read_text(encoding="utf-8")
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for op in restapi.OPERATIONS:
        assert f"{op.method} {op.path}" in page.text
    assert "sendJoin" in page.text and "JoinAck" in page.text
    # Self-contained: no script, nothing loaded from elsewhere.
    assert "<script" not in page.text
    assert not re.search(r'(src|href)="(https?:)?//', page.text)
