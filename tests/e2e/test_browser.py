"""The web page in a real browser (Playwright driving Debian's Chromium).

Two browser contexts, each pinned to a different gateway, chat through the
stack; a page behind the load balancer survives the death of its gateway;
user text stays text. Screenshots go to tests/e2e/screenshots/tmp/.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .client import Session
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHAT_TEST_CHROMIUM", "/usr/bin/chromium")
# What an offline root machine needs: no sandbox (root), no GPU, no calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).parent / "screenshots" / "tmp"
TIMEOUT_MS = 15_000

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402


@pytest.fixture(scope="module")
def lb(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from chat_devstack.caddy import Caddy
    from chat_devstack.ports import free_port

    caddy = Caddy.start(free_port(), [stack.gateway(1).port, stack.gateway(2).port],
                        tmp_path_factory.mktemp("caddy"))
    try:
        yield caddy.url
    finally:
        caddy.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def _open(browser: Browser, url: str) -> Page:
    context = await browser.new_context(viewport={"width": 1000, "height": 700})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(url)
    return page


async def _register(page: Page, name: str) -> None:
    await page.fill("#username", name)
    await page.fill("#password", "browser-test-pw")
    await page.click("#registerBtn")
    await expect(page.locator("#banner")).to_have_class("banner ok", timeout=TIMEOUT_MS)


async def _join(page: Page, room: str) -> None:
    await page.fill("#roomInput", room)
    await page.click("#joinForm button")
    await expect(page.locator("#tabs .tab.active")).to_contain_text(room)


async def _say(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#sendForm button")


async def test_two_browsers_on_two_gateways_chat(stack: Stack, browser: Browser) -> None:
    alice_page = await _open(browser, stack.gateway(1).url + "/")
    bob_page = await _open(browser, stack.gateway(2).url + "/")
    alice, bob, room = unique("alice"), unique("bob"), unique("web")
    await _register(alice_page, alice)
    await _register(bob_page, bob)
    await expect(alice_page.locator("#bannerText")).to_contain_text("via gw-1")
    await expect(bob_page.locator("#bannerText")).to_contain_text("via gw-2")
    await _join(alice_page, room)
    await _join(bob_page, room)

    await _say(alice_page, "hello from gateway one")
    hello = bob_page.locator("#messages li", has_text="hello from gateway one")
    await expect(hello).to_be_visible()
    own = alice_page.locator("#messages li.own", has_text="hello from gateway one")
    await expect(own).to_be_visible()

    # reply to it from the other browser
    await bob_page.locator("#messages li", has_text="hello from gateway one").hover()
    await bob_page.locator("#messages li", has_text="hello from gateway one").locator(
        ".replyBtn").click()
    await _say(bob_page, "hi alice")
    reply = alice_page.locator("#messages li", has_text="hi alice")
    await expect(reply.locator(".reply")).to_contain_text("hello from gateway one")
    await expect(alice_page.locator("#messages li:not(.own)", has_text="hi alice")).to_have_count(1)
    await alice_page.screenshot(path=str(SHOTS / "chat-alice.png"))
    await bob_page.screenshot(path=str(SHOTS / "chat-bob.png"))
    await alice_page.context.close()
    await bob_page.context.close()


async def test_presence_and_typing_show_up(stack: Stack, browser: Browser) -> None:
    alice_page = await _open(browser, stack.gateway(1).url + "/")
    bob_page = await _open(browser, stack.gateway(2).url + "/")
    alice, bob, room = unique("alice"), unique("bob"), unique("pres")
    await _register(alice_page, alice)
    await _register(bob_page, bob)
    await _join(alice_page, room)
    await _join(bob_page, room)
    members = alice_page.locator("#memberList li")
    await expect(members.filter(has_text=bob)).to_have_count(1)
    await expect(members.filter(has_text=alice)).to_have_count(1)

    await bob_page.locator("#text").press_sequentially("typing something", delay=20)
    await expect(alice_page.locator("#typing")).to_have_text(f"{bob} is typing…")
    await bob_page.click("#sendForm button")  # sending says stop
    await expect(alice_page.locator("#typing")).to_have_text("")
    await alice_page.screenshot(path=str(SHOTS / "presence.png"))

    await bob_page.context.close()  # the last tab of bob closes: he leaves
    await expect(members.filter(has_text=bob)).to_have_count(0)
    await alice_page.context.close()


async def test_user_text_is_rendered_as_text(stack: Stack, browser: Browser) -> None:
    sender = await _open(browser, stack.gateway(1).url + "/")
    reader = await _open(browser, stack.gateway(2).url + "/")
    room = unique("xss")
    await _register(sender, unique("mallory"))
    await _register(reader, unique("victim"))
    await _join(sender, room)
    await _join(reader, room)
    probes = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>",
              '<a href="javascript:window.__xss=3">click</a>', "<b>bold</b>"]
    for probe in probes:
        await _say(sender, probe)
    for probe in probes:
        await expect(reader.locator("#messages li .text", has_text=probe)).to_have_count(1)
    assert await reader.locator("#messages img, #messages script, #messages a, #messages b"
                                ).count() == 0
    assert await reader.evaluate("window.__xss") is None
    assert await sender.evaluate("window.__xss") is None
    await sender.context.close()
    await reader.context.close()


async def test_page_reconnects_through_the_lb_when_its_gateway_dies(
        stack: Stack, browser: Browser, lb: str) -> None:
    page = await _open(browser, lb + "/")
    name, room = unique("carol"), unique("crash")
    await _register(page, name)
    await _join(page, room)
    await _say(page, "before the crash")
    await expect(page.locator("#messages li.own", has_text="before the crash")).to_be_visible()
    node = (await page.locator("#bannerText").inner_text()).rsplit("via ", 1)[1]
    dead = 1 if node == "gw-1" else 2
    other = 3 - dead

    from .client import register_and_login

    dave = await register_and_login(stack.gateway(other).url, unique("dave"))
    writer = await Session.open(stack.ws_url(other), dave["access_token"])
    await writer.request("join", room=room)
    await stack.akill(f"gateway-{dead}")
    try:
        for i in range(3):
            await writer.request("send", room=room, text=f"while you were away {i}")
        await expect(page.locator("#bannerText")).to_contain_text(f"via gw-{other}",
                                                                  timeout=20_000)
        for i in range(3):
            await expect(page.locator("#messages li", has_text=f"while you were away {i}")
                         ).to_have_count(1)
        await expect(page.locator("#messages li", has_text="before the crash")).to_have_count(1)
        # presence through the load balancer, after the crash: dave is listed online
        await expect(page.locator("#memberList li", has_text=dave["user"]["name"])
                     ).to_have_count(1)
        await page.screenshot(path=str(SHOTS / "reconnected.png"))
    finally:
        await writer.close()
        await stack.astart(f"gateway-{dead}")
        await page.context.close()

