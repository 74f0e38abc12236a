"""``/api/chat`` driven by the real Vercel AI SDK in Node: ``DefaultChatTransport`` (what
``useChat`` sends and reconnects with) and ``readUIMessageStream`` (what builds its messages),
against ``messagestore serve`` with ``messagestore worker`` on one database (its agent,
``tests.support.held_agent``, holds the answer open halfway until the test lets it go).

Send, read part of the reply, SIGKILL the server, start another, ``reconnectToStream`` and read
to the finish: the message equals what the database holds. A repeated POST submits nothing
new; regenerate leaves the user message once and one new reply. ``.ci/run`` installs the pinned
``ai`` version and points ``MESSAGESTORE_AI_SDK_DIR`` at it; without Node or that folder the
test skips, saying which.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from messagestore import Role, open_store
from tests.support.chat_helpers import WorkerProcess
from tests.support.held_agent import FIRST, SECOND, release
from tests.support.paths import SUPPORT
from tests.support.processes import Processes
from tests.support.server_helpers import ServerProcess

CLIENT = SUPPORT / "ai_sdk_chat.cjs"
AI_DIR = os.environ.get("MESSAGESTORE_AI_SDK_DIR", "")
TIMEOUT = 90
CHAT = "aisdkchat0000001"
HELD_AGENT = "tests.support.held_agent:run_turn"


def _why_not() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed (the AI SDK test runs the `ai` package in Node)"
    if not AI_DIR or not (Path(AI_DIR) / "node_modules" / "ai" / "package.json").exists():
        return (
            "the `ai` npm package is not installed: set MESSAGESTORE_AI_SDK_DIR to a folder "
            "where `npm install ai@6` ran (.ci/run does this)"
        )
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


class Node:
    """One run of the Node client; ``events()`` yields its JSON lines as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        stdout = self.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            yield json.loads(line)
        assert self.process.stderr is not None
        err = await self.process.stderr.read()
        assert await self.process.wait() == 0, err.decode()

    async def last(self) -> dict[str, Any]:
        events = [event async for event in self.events()]
        assert events, "the client printed nothing"
        return events[-1]


async def node(processes: Processes, *args: str) -> Node:
    process = await processes.exec(
        "node",
        str(CLIENT),
        *args,
        env={**os.environ, "MESSAGESTORE_AI_SDK_DIR": AI_DIR},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Node(process)


def texts(message: dict[str, Any]) -> list[str]:
    return [p["text"] for p in message["parts"] if p["type"] == "text"]


async def test_use_chats_transport_sends_resumes_across_a_killed_server_and_regenerates(
    sqlite_url: str, processes: Processes
) -> None:
    WorkerProcess(sqlite_url, "--agent", HELD_AGENT, owner=processes).start()
    first = ServerProcess(sqlite_url, "--keepalive", "1", owner=processes).start()
    question = "does the reply survive the server?"
    async with asyncio.timeout(TIMEOUT):
        # Send, and read until the reply shows text; then the server dies under the stream.
        sending = await node(processes, "send", f"{first.url}/api/chat", CHAT, question, "u-1")
        events = sending.events()
        partial = await anext(events)
        assert partial["event"] == "partial", partial
        assert first.process is not None
        first.process.kill()
        broken = [event async for event in events]
        assert [e["event"] for e in broken] == ["error"], broken

        # Another server on the same database: the transport reconnects and reads to the end.
        second = ServerProcess(sqlite_url, "--keepalive", "1", owner=processes).start()
        api = f"{second.url}/api/chat"
        reconnecting = (await node(processes, "reconnect", api, CHAT)).events()
        connected = await anext(reconnecting)
        assert connected == {"event": "connected"}  # the turn still runs: the agent holds
        await release(sqlite_url, CHAT)
        rest = [event async for event in reconnecting]
        assert [e["event"] for e in rest] == ["final"], rest
        resumed = rest[-1]
        message = resumed["message"]

        # The same POST again: nothing new is submitted, the same turn comes back.
        repeated = await (await node(processes, "send", api, CHAT, question, "u-1")).last()
        assert repeated["event"] == "final", repeated
        after_repeat = await _stored(sqlite_url)

        # Regenerate the reply.
        regenerated = await (
            await node(processes, "regenerate", api, CHAT, question, "u-1", message["id"])
        ).last()
        assert regenerated["event"] == "final", regenerated
        nothing = await (await node(processes, "reconnect", api, CHAT)).last()

    stored = after_repeat
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert message["id"] == partial["message"]["id"]  # the turn's id, from either server
    assert message["role"] == "assistant"
    assert texts(message) == [stored[3].text]
    assert stored[3].text == f"{FIRST} {SECOND} "
    assert stored[3].text.startswith(texts(partial["message"])[0])
    kinds = [p["type"] for p in message["parts"]]
    assert kinds.count("step-start") == 3
    (tool,) = [p for p in message["parts"] if p["type"] == "tool-word_count"]
    assert tool["state"] == "output-available"
    assert tool["output"] == stored[2].tool_results[0].content
    assert tool["input"] == json.loads(stored[1].tool_calls[0].input) == {"text": question}
    (reasoning,) = [p for p in message["parts"] if p["type"] == "reasoning"]
    assert reasoning["text"] == stored[1].reasoning.thinking  # type: ignore[union-attr]
    assert message["metadata"]["finish"]["reason"] == "end_turn"

    assert repeated["message"]["id"] == message["id"]
    assert repeated["message"]["parts"] == message["parts"]

    now = await _stored(sqlite_url)
    assert [m.role for m in now] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert now[0].text == question
    assert not {m.id for m in now} & {m.id for m in stored}
    assert regenerated["message"]["id"] != message["id"]
    assert texts(regenerated["message"]) == [now[3].text]
    assert nothing == {"event": "none"}


async def _stored(url: str) -> list[Any]:
    async with open_store(url) as store:
        return await store.messages.list(CHAT)
