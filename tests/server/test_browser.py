"""The web view in a real browser: Debian's ``chromium``, headless, driven by playwright's client
(``executable_path``; nothing downloads a browser). ``.ci/run`` installs chromium; where it is
missing the tests skip, saying so.

* A reply streams in live; a reload mid-stream shows the same text, nothing lost or repeated;
  hostile text (script tags, an ``onerror`` image, NUL) is shown as text and runs nothing.
* A long reply (reasoning, text, a tool call whose input grows) streams in as deltas, which the
  page counts; after a reload mid-reply its copy ends equal to the database, field by field,
  and so does what it shows; a delta whose base is not the page's copy (or that does not fit
  it) is refused and the message fetched.
* With ``--demo``: type a message, watch the simulated agent's reply stream in, reload.
* At 420 and 1280 px wide: the title stays readable (not squeezed by the buttons beside it),
  sessions of the same title show different times, and the selected session's message count
  follows the live events (the session list it was first given is served stale meanwhile).

Each test saves a screenshot under ``$MESSAGESTORE_ARTIFACTS`` (default: the test's tmp dir);
``docs/web-view.png`` in the repository is ``web-view-demo.png`` of a run, and
``docs/web-view-420.png`` and ``docs/web-view-1280.png`` are the layout test's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from messagestore import FinishReason, Message, Role, Store, ToolCall, open_store
from messagestore.server._demo import simulated_agent
from messagestore.server._json import message_json
from tests.support.processes import Processes
from tests.support.server_helpers import ServerProcess

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

try:
    from playwright.async_api import Browser, Page, Route, async_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)",
    ),
    pytest.mark.skipif(async_playwright is None, reason="playwright is not installed"),
]

HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> \x00 «ünï»'


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MESSAGESTORE_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    assert async_playwright is not None
    del tmp_path  # playwright gives every launch a fresh profile of its own
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def reply_text(page: Page) -> str:
    """The text of the newest assistant message with text on the page."""
    text: str = await page.locator('article[data-role="assistant"] .text').last.inner_text()
    return text


async def wait_streaming(page: Page, at_least: int) -> str:
    """Wait until the newest reply shows at least ``at_least`` words but is not finished."""
    await page.wait_for_function(
        """(n) => {
            const a = [...document.querySelectorAll('article[data-role="assistant"]')]
              .filter((x) => x.querySelector('.text')).pop();
            return a && a.dataset.finished === 'false'
              && a.querySelector('.text').textContent.trim().split(/\\s+/).length >= n;
        }""",
        arg=at_least,
        timeout=TIMEOUT_MS,
    )
    return await reply_text(page)


async def wait_finished(page: Page, count: int) -> None:
    await page.wait_for_function(
        """(n) => [...document.querySelectorAll('article[data-role="assistant"]')]
              .filter((x) => x.dataset.finished === 'true').length >= n""",
        arg=count,
        timeout=TIMEOUT_MS,
    )


async def test_live_reply_survives_a_reload(
    browser: Browser, sqlite_url: str, tmp_path: Path
) -> None:
    with ServerProcess(sqlite_url) as server:
        async with open_store(sqlite_url) as store:
            session = await store.sessions.create("Trip planning")
            user = await store.messages.create(session.id, role=Role.USER)
            user.append_text("How many words are in this question about the weather in Paris?")
            await store.messages.update(user)
            await store.messages.flush(user.id)
            page = await browser.new_page(viewport={"width": 1200, "height": 760})
            await page.goto(server.url + "/")
            await page.wait_for_selector(f'article[data-id="{user.id}"]', timeout=TIMEOUT_MS)
            # The simulated agent's script (reasoning, a tool call and its result, a reply),
            # run directly against the store from this process: the page hears it through the
            # server's change feed.
            turn = SimpleNamespace(session_id=session.id, text=user.text)
            agent = asyncio.create_task(simulated_agent(store, rate=25)(turn))
            try:
                before = await wait_streaming(page, 12)
                await page.reload()
                after = await wait_streaming(page, len(before.split()))
                assert after.startswith(before.rstrip())  # the stored text, continued
                await wait_finished(page, 2)
                await agent
            finally:
                agent.cancel()
            messages = await store.messages.list(session.id)
            assert (await reply_text(page)).strip() == messages[-1].text.strip()
            assert await page.locator('article[data-role="assistant"]').count() == 2
            await page.locator("details.reasoning").first.click()  # unfold the reasoning
            await page.screenshot(path=str(artifacts(tmp_path) / "web-view.png"))


async def test_hostile_text_is_shown_as_text(browser: Browser, sqlite_url: str) -> None:
    with ServerProcess(sqlite_url) as server:
        async with open_store(sqlite_url) as store:
            session = await store.sessions.create("Title " + HOSTILE.replace("\x00", ""))
            user = await store.messages.create(session.id, role=Role.USER)
            user.append_text(HOSTILE)
            await store.messages.update(user)
            await store.messages.flush(user.id)
        page = await browser.new_page()
        await page.goto(server.url + "/")
        shown = page.locator(f'article[data-id="{user.id}"] .text')
        await shown.wait_for(timeout=TIMEOUT_MS)
        assert await shown.evaluate("node => node.textContent") == HOSTILE  # verbatim, NUL too
        assert "<script>" in await page.locator("#session-title").inner_text()
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("#messages script, #messages img, #sessions img").count() == 0


async def test_demo_chat_in_the_browser(browser: Browser, sqlite_url: str, tmp_path: Path) -> None:
    with ServerProcess(sqlite_url, "--demo", "--demo-rate", "25") as server:
        page = await browser.new_page(viewport={"width": 1200, "height": 760})
        await page.goto(server.url + "/")
        await page.fill("#input", "Hello, simulated agent!")
        await page.keyboard.press("Enter")
        before = await wait_streaming(page, 10)
        await page.reload()
        after = await wait_streaming(page, len(before.split()))
        assert after.startswith(before.rstrip())
        await wait_finished(page, 2)
        async with open_store(sqlite_url) as store:
            session = (await store.sessions.list())[0]
            messages = await store.messages.list(session.id)
        assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
        assert messages[0].text == "Hello, simulated agent!"
        assert (await reply_text(page)).strip() == messages[-1].text.strip()
        await page.locator("details.reasoning").first.click()  # unfold the reasoning
        await page.screenshot(path=str(artifacts(tmp_path) / "web-view-demo.png"))


async def counters(page: Page) -> dict[str, int]:
    """The page's counts of deltas applied and refused, and of messages fetched."""
    found: dict[str, str] = await page.locator("#messages").evaluate("node => ({...node.dataset})")
    return {
        name: int(found.get(key, "0"))
        for name, key in (
            ("applied", "deltasApplied"),
            ("refused", "deltasRefused"),
            ("fetched", "messagesFetched"),
        )
    }


async def shown_parts(page: Page, message_id: str) -> list[str]:
    """The text of each growing node (text, thinking, tool input) of a message, in order."""
    texts: list[str] = await page.locator(
        f'article[data-id="{message_id}"] [data-grows]'
    ).evaluate_all("nodes => nodes.map((node) => node.textContent)")
    return texts


async def page_copy(page: Page, message_id: str) -> Any:
    """The page's own copy of a message (its JSON, as it applied frames to it)."""
    return await page.evaluate("(id) => state.messages.get(id)", message_id)


async def long_reply(store: Store, session_id: str, words: int) -> Message:
    """A reply that thinks, streams ``words`` words of text (newlines and accents too), calls
    a tool whose input grows, and finishes; a few milliseconds between changes."""
    reply = await store.messages.create(session_id, role=Role.ASSISTANT, model="demo")
    for i in range(30):
        reply.append_reasoning(f"step {i}, ")
        await store.messages.update(reply)
        await asyncio.sleep(0.003)
    reply.finish_reasoning()
    await store.messages.update(reply)
    for i in range(words):
        reply.append_text(f"wörd{i}" + ("\n" if i % 40 == 39 else " "))
        await store.messages.update(reply)
        await asyncio.sleep(0.004)
    arguments = '{"query": "the weather in Paris", "days": 3}'
    for end in range(4, len(arguments) + 4, 4):
        reply.add_tool_call(ToolCall("call-1", "forecast", arguments[:end]))
        await store.messages.update(reply)
        await asyncio.sleep(0.004)
    reply.add_tool_call(ToolCall("call-1", "forecast", arguments, finished=True))
    reply.add_finish(FinishReason.TOOL_USE)
    await store.messages.update(reply)
    return reply


async def test_a_long_reply_streams_as_deltas_and_survives_a_reload(
    browser: Browser, sqlite_url: str, processes: Processes
) -> None:
    """The page applies deltas to its copy (and appends them to what it shows), ends equal to
    the database after a reload mid-reply, and refuses a delta that does not apply to its copy:
    it fetches the message instead."""
    server = ServerProcess(sqlite_url, owner=processes).start()
    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("Deltas")
        page = await browser.new_page(viewport={"width": 1200, "height": 760})
        await page.goto(server.url + "/")
        await page.wait_for_function(
            "() => document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
        )
        writer = asyncio.create_task(long_reply(store, session.id, 600))
        try:
            await wait_streaming(page, 150)
            before = await counters(page)
            assert before["applied"] > 20 and before["refused"] == before["fetched"] == 0, before
            await page.reload()
            await wait_streaming(page, 300)  # the stored text, continued with deltas again
            reply = await writer
        finally:
            writer.cancel()
        await wait_finished(page, 1)
        stored = await store.messages.get(reply.id)
        after = await counters(page)
        assert after["applied"] > 20 and after["refused"] == after["fetched"] == 0, after
        assert await page_copy(page, reply.id) == message_json(stored)  # field by field
        thinking = stored.reasoning.thinking if stored.reasoning else ""
        assert await shown_parts(page, reply.id) == [
            thinking,
            stored.text,
            stored.tool_calls[0].input,
        ]

        # A delta whose base is not the page's copy: refused, and the message fetched.
        async def inject(delta: dict[str, Any]) -> None:
            async with page.expect_request(f"**/api/messages/{reply.id}") as fetched:
                await page.evaluate(
                    """(delta) => state.source.dispatchEvent(
                        new MessageEvent("delta", { data: JSON.stringify(delta) }))""",
                    delta,
                )
            await fetched.value

        revision = stored.revision
        await inject(
            {
                "id": reply.id,
                "base": revision - 1,
                "revision": revision + 1,
                "append": {"1": "WRONG BASE"},
            }
        )
        # One with the right base that does not fit the copy (no part 9): refused too.
        await inject(
            {
                "id": reply.id,
                "base": revision,
                "revision": revision + 1,
                "append": {"9": "NO SUCH PART"},
            }
        )
        await page.wait_for_function(
            "() => document.querySelector('#messages').dataset.messagesFetched === '2'",
            timeout=TIMEOUT_MS,
        )
        assert (await counters(page))["refused"] == 2
        assert await page_copy(page, reply.id) == message_json(stored)
        assert "WRONG" not in await reply_text(page) and "NO SUCH" not in await reply_text(page)


LONG_TITLE = "Refactor the flaky test suite before the release on Friday, then write it up"


@pytest.mark.parametrize("width", [420, 1280])
async def test_layout_times_and_live_counts(
    browser: Browser, sqlite_url: str, tmp_path: Path, processes: Processes, width: int
) -> None:
    async with open_store(sqlite_url) as store:
        twins = [await store.sessions.create("Trip planning") for _ in range(2)]
        chat = await store.sessions.create(LONG_TITLE)  # the newest: the page selects it
    server = ServerProcess(sqlite_url, "--demo", "--demo-rate", "40", owner=processes).start()
    page = await browser.new_page(viewport={"width": width, "height": 760})
    listed: list[str] = []

    async def stale_list(route: Route) -> None:
        """The session list as first served, for ever: counts can only come from events."""
        if not listed:
            listed.append(await (await route.fetch()).text())
        await route.fulfill(status=200, content_type="application/json", body=listed[0])

    await page.route("**/api/sessions", stale_list)
    await page.goto(server.url + "/")
    await page.wait_for_selector(f'#sessions li[data-id="{chat.id}"].selected', timeout=TIMEOUT_MS)
    await page.wait_for_function(  # the snapshot is shown and its events are flowing
        "() => document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
    )

    title = page.locator("#session-title")
    assert await title.inner_text() == LONG_TITLE
    box = await title.bounding_box()
    assert box is not None and box["width"] >= min(0.6 * width, 600), box  # not squeezed
    clipped = await title.evaluate("node => node.scrollWidth > node.clientWidth")
    assert clipped == (width < 600)  # cut with an ellipsis only where the line is too short
    assert await title.evaluate("node => getComputedStyle(node).textOverflow") == "ellipsis"

    times = [
        await page.locator(f'#sessions li[data-id="{twin.id}"] .when').inner_text()
        for twin in twins
    ]
    assert times[0] != times[1] and all(times), times  # the same title, told apart

    count = page.locator(f'#sessions li[data-id="{chat.id}"] .count')
    assert await count.inner_text() == "0"
    await page.fill("#input", "How many words are in this question about the weather in Paris?")
    await page.keyboard.press("Enter")
    await wait_finished(page, 2)  # user, assistant, tool, assistant
    await page.wait_for_function(
        "(id) => document.querySelector(`#sessions li[data-id='${id}'] .count`)"
        ".textContent === '4'",
        arg=chat.id,
        timeout=TIMEOUT_MS,
    )
    assert json.loads(listed[0])["sessions"][0]["message_count"] == 0  # the list stayed stale
    for twin in twins:
        assert await page.locator(f'#sessions li[data-id="{twin.id}"] .count').inner_text() == "0"
    await page.screenshot(path=str(artifacts(tmp_path) / f"web-view-{width}.png"))
