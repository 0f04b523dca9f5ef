"""The live dashboard in a real headless browser: Debian's chromium driven by Playwright.

A relay with room for one turn and no queue runs a paced reply from the fake upstream; the page
must mirror the busy claude's screen while the words arrive, and list the 529 a second request
gets meanwhile. Set CLAUDE_RELAY_DASHBOARD_SCREENSHOT=<path.png> to save what the page showed
then (docs/dashboard.png is made that way). Skipped where chromium is missing: Playwright is
pointed at Debian's and never downloads a browser.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator

import anthropic
import pytest
import pytest_asyncio
from playwright.async_api import Page, async_playwright

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.relay_proc import Relay, start_relay

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):  # pragma: no cover - CI installs it (.ci/run)
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.pin_only]

WAIT_MS = 40_000  # a browser and two daemons on a shared 2-core machine
WORDS = " ".join(f"word{i:02d}" for i in range(48))
# ~4 s of output, a few characters at a time: long enough to watch, short enough for CI
PACED = Reply(text=WORDS, chunk_chars=6, delay=0.08)


def in_a_screen(text: str) -> str:
    """JS: the frame number (`data-seq`) of the screen showing `text`, or null."""
    return (
        "() => [...document.querySelectorAll('pre.screen')]"
        f".find(p => p.textContent.includes({text!r}))?.dataset.seq ?? null"
    )


async def seq_showing(page: Page, text: str) -> int:
    """Wait until a mirrored screen shows `text`; the frame number it had then (the panel of a
    stateless claude goes away as soon as its turn ends, so it is read in the same step)."""
    handle = await page.wait_for_function(in_a_screen(text))
    return int(await handle.json_value())


@pytest_asyncio.fixture(loop_scope="session")
async def relay() -> AsyncIterator[tuple[Relay, FakeUpstream]]:
    async with (
        FakeUpstream() as up,
        start_relay(up, max_busy="1", max_queue="0", warm="1") as relay,
    ):
        yield relay, up


@pytest_asyncio.fixture(loop_scope="session")
async def page(relay: tuple[Relay, FakeUpstream]) -> AsyncIterator[Page]:
    async with async_playwright() as p:
        # root in a container has no user namespace for chromium's sandbox
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1250})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            await browser.close()


async def test_screen_mirrors_a_turn_and_a_full_pool_shows_529(
    relay: tuple[Relay, FakeUpstream], page: Page
) -> None:
    daemon, up = relay
    await page.goto(daemon.url + "/dashboard")
    await page.locator("#connection", has_text="live").wait_for()
    await page.locator(".screen-panel").first.wait_for()  # the warm claude, at its prompt

    up.push(PACED)
    async with anthropic.AsyncAnthropic(base_url=daemon.url, api_key="x", max_retries=0) as sdk:
        turn = asyncio.create_task(
            sdk.messages.create(
                model="default",
                max_tokens=500,
                messages=[{"role": "user", "content": "Count slowly"}],
            )
        )
        try:
            seq = await seq_showing(page, "word03")
            assert await page.evaluate(in_a_screen("word47")) is None  # mid-turn
            # the one slot is taken and no queue is allowed: a second turn is refused
            with pytest.raises(anthropic.APIStatusError) as refused:
                await sdk.messages.create(
                    model="default",
                    max_tokens=50,
                    messages=[{"role": "user", "content": "Me too"}],
                )
            assert refused.value.status_code == 529
            await page.locator('tr.turn[data-status="529"]').wait_for()
            await page.locator("#admission", has_text="FULL").wait_for()
            assert (
                "overloaded_error" in await page.locator('tr.turn[data-status="529"]').inner_text()
            )
            later = await seq_showing(page, "word30")
            if shot := os.environ.get("CLAUDE_RELAY_DASHBOARD_SCREENSHOT"):
                await page.screenshot(path=shot, full_page=True)
            assert later > seq  # the same claude's screen, redrawn while the words came
            reply = await turn
        finally:
            turn.cancel()
    assert reply.content[0].text == WORDS  # type: ignore[union-attr]
    row = page.locator('tr.turn[data-status="200"]')
    await row.wait_for()
    assert "ok" in await row.inner_text()
