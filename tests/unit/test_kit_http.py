"""chat_kit.http.CountRequests: chat_http_requests_total{route,method,status}
with the route's template, never the raw path (docs/protocol.md §7)."""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from chat_kit.http import CountRequests, health_routes


async def room(request: Request) -> Response:
    if request.path_params["room"] == "missing":
        return PlainTextResponse("no such room", status_code=404)
    return PlainTextResponse("ok")


async def broken(_: Request) -> Response:
    raise RuntimeError("bug")


APP = Starlette(routes=[Route("/v1/rooms/{room}", room, methods=["GET"]),
                        Route("/broken", broken, methods=["GET"]),
                        *health_routes(lambda: True)],
                middleware=[Middleware(CountRequests)])


def count(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("chat_http_requests_total",
                                     {"route": route, "method": method, "status": status}) or 0.0


async def test_requests_are_counted_by_template_method_and_status() -> None:
    keys = [("/v1/rooms/{room}", "GET", "200"), ("/v1/rooms/{room}", "GET", "404"),
            ("/v1/rooms/{room}", "POST", "405"), ("unmatched", "GET", "404"),
            ("unmatched", "other", "404"), ("/broken", "GET", "500")]
    before = {k: count(*k) for k in keys}
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        assert (await http.get("/v1/rooms/a")).status_code == 200
        assert (await http.get("/v1/rooms/b")).status_code == 200
        assert (await http.get("/v1/rooms/missing")).status_code == 404
        assert (await http.post("/v1/rooms/a")).status_code == 405
        for i in range(3):
            assert (await http.get(f"/wp-admin/{i}.php")).status_code == 404
        assert (await http.request("BREW", "/coffee")).status_code == 404
        assert (await http.get("/broken")).status_code == 500
        for probe in ("/healthz", "/readyz", "/metrics"):  # not counted
            assert (await http.get(probe)).status_code == 200
    assert {k: count(*k) - before[k] for k in keys} == {
        ("/v1/rooms/{room}", "GET", "200"): 2, ("/v1/rooms/{room}", "GET", "404"): 1,
        ("/v1/rooms/{room}", "POST", "405"): 1, ("unmatched", "GET", "404"): 3,
        ("unmatched", "other", "404"): 1, ("/broken", "GET", "500"): 1}
    routes = {s.labels["route"] for m in REGISTRY.collect() if m.name == "chat_http_requests"
              for s in m.samples}
    assert not {"/healthz", "/readyz", "/metrics", "/v1/rooms/a"} & routes
