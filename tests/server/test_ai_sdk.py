"""The UI message stream read by the real Vercel AI SDK (the ``ai`` npm package) in Node.

``.ci/run`` installs the pinned ``ai`` version into a scratch folder and points
``MESSAGESTORE_AI_SDK_DIR`` at it. Where Node or that folder is missing the tests skip, saying
which.
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

from messagestore import FinishReason, Role, Store, ToolCall, ToolResult
from messagestore.server import create_app
from tests.support.paths import SUPPORT
from tests.support.processes import Processes
from tests.support.server_helpers import serving

CLIENT = SUPPORT / "ai_sdk_client.cjs"
AI_DIR = os.environ.get("MESSAGESTORE_AI_SDK_DIR", "")


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


@pytest.fixture
async def base_url(store: Store) -> AsyncIterator[str]:
    async with serving(create_app(store, keepalive=0.5)) as server:
        yield server.url


async def read_with_ai_sdk(processes: Processes, url: str) -> dict[str, Any]:
    process = await processes.exec(
        "node",
        str(CLIENT),
        url,
        env={**os.environ, "MESSAGESTORE_AI_SDK_DIR": AI_DIR},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


HOSTILE = "<script>alert('x')</script> \x00 ünïcode 𝄞 \u2028 \"quoted\" \\ back"


async def test_the_ai_sdk_builds_the_stored_message_live(
    store: Store, base_url: str, processes: Processes
) -> None:
    session = await store.sessions.create("ai sdk")
    reply = await store.messages.create(session.id, role=Role.ASSISTANT, model="m1")
    reply.append_reasoning("Let me ")
    await store.messages.update(reply)
    await store.messages.flush(reply.id)
    reader = asyncio.create_task(
        read_with_ai_sdk(processes, f"{base_url}/api/messages/{reply.id}/ui-stream")
    )
    await asyncio.sleep(0.3)  # let Node connect and receive the first state (not required)
    reply.append_reasoning("think.")
    reply.finish_reasoning()
    await store.messages.update(reply)
    for word in HOSTILE.split(" "):
        reply.append_text(word + " ")
        await store.messages.update(reply)
        await asyncio.sleep(0.01)
    reply.add_tool_call(ToolCall("call_1", "search", '{"query": "we'))
    await store.messages.update(reply)
    reply.add_tool_call(ToolCall("call_1", "search", '{"query": "weather"}', finished=True))
    await store.messages.update(reply)
    reply.add_tool_result(ToolResult("call_1", "search", "sunny"))
    reply.add_finish(FinishReason.END_TURN)
    await store.messages.update(reply)
    result = await reader
    stored = await store.messages.get(reply.id)

    assert result["header"] == "v1"
    message = result["message"]
    assert message["id"] == stored.id
    assert message["role"] == "assistant"
    kinds = [p["type"] for p in message["parts"]]
    assert kinds == ["step-start", "reasoning", "text", "tool-search"]
    reasoning, text, tool = message["parts"][1:]
    assert reasoning["text"] == "Let me think." and reasoning["state"] == "done"
    assert text["text"] == stored.text and text["state"] == "done"
    assert tool["toolCallId"] == "call_1"
    assert tool["state"] == "output-available"
    assert tool["input"] == {"query": "weather"}
    assert tool["output"] == "sunny"
    assert message["metadata"]["finish"]["reason"] == "end_turn"
    assert message["metadata"]["sessionId"] == session.id
    assert result["chunks"][-1]["type"] == "finish"
    assert result["chunks"][-1]["finishReason"] == "stop"


async def test_the_ai_sdk_reads_a_tool_message_and_a_canceled_reply(
    store: Store, base_url: str, processes: Processes
) -> None:
    session = await store.sessions.create("ai sdk")
    tool = await store.messages.create(
        session.id, role=Role.TOOL, parts=[ToolResult("c1", "lookup", "err!", is_error=True)]
    )
    result = await read_with_ai_sdk(processes, f"{base_url}/api/messages/{tool.id}/ui-stream")
    part = result["message"]["parts"][1]
    assert part["type"] == "tool-lookup" and part["state"] == "output-error"
    assert part["errorText"] == "err!"

    reply = await store.messages.create(session.id, role=Role.ASSISTANT)
    reply.append_text("partial")
    reply.add_finish(FinishReason.CANCELED, "stopped by the user")
    await store.messages.update(reply)
    result = await read_with_ai_sdk(processes, f"{base_url}/api/messages/{reply.id}/ui-stream")
    assert [c["type"] for c in result["chunks"]][-3:] == ["finish-step", "abort", "finish"]
    assert result["message"]["parts"][1]["text"] == "partial"
    assert result["message"]["metadata"]["finish"]["reason"] == "canceled"
