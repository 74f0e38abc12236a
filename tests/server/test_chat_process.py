"""The chat backend as separate processes: ``messagestore serve`` takes the input, ``messagestore
worker`` runs the agent, and a reply survives a SIGKILL of the server that was streaming it (a
second server on the same database resumes the stream from the stored state to the finish).
The worker's ``--agent module:function`` and its stop on SIGINT / SIGTERM however it was
started. Every process belongs to the ``processes`` fixture."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from messagestore import Role, open_store
from messagestore.dispatch import Dispatcher, Turn, TurnOutcome
from tests.support.chat_helpers import WorkerProcess, chat_body, ui_chunks
from tests.support.held_agent import FIRST, SECOND, release
from tests.support.paths import ROOT
from tests.support.processes import Processes
from tests.support.server_helpers import ServerProcess

TIMEOUT = 90
HELD_AGENT = "tests.support.held_agent:run_turn"


def texts_of(chunks: list[Any]) -> list[str]:
    """The text of each text part the chunks build, in order."""
    texts: dict[str, str] = {}
    for chunk in chunks:
        if isinstance(chunk, dict) and chunk["type"] == "text-delta":
            texts[chunk["id"]] = texts.get(chunk["id"], "") + chunk["delta"]
    return list(texts.values())


async def test_a_reply_survives_sigkill_of_the_server_streaming_it(
    db_url: str, processes: Processes
) -> None:
    WorkerProcess(db_url, "--agent", HELD_AGENT, owner=processes).start()
    first = ServerProcess(db_url, "--keepalive", "1", owner=processes).start()
    body = chat_body("survivor-chat-01", "please survive a crash of the server")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
        async with client.stream("POST", f"{first.url}/api/chat", json=body) as response:
            before = await ui_chunks(
                response, stop=lambda c: isinstance(c, dict) and c["type"] == "text-delta"
            )
            assert first.process is not None
            first.process.kill()  # SIGKILL, mid-reply: the agent holds the answer open
            first.process.wait(10)
        second = ServerProcess(db_url, "--keepalive", "1", owner=processes).start()
        url = f"{second.url}/api/chat/survivor-chat-01/stream"
        async with client.stream("GET", url) as resumed:
            assert resumed.status_code == 200  # the turn still runs: its stream, from the start
            await release(db_url, "survivor-chat-01")
            after = await ui_chunks(resumed)
        # The same POST on the new server joins the same (now finished) turn: nothing new.
        async with client.stream("POST", f"{second.url}/api/chat", json=body) as again:
            repeated = await ui_chunks(again)
        gone = await client.get(f"{second.url}/api/chat/survivor-chat-01/stream")
    assert before[0]["type"] == "start" and after[0] == before[0]  # the same turn
    assert after[-2]["type"] == "finish" and after[-1] == "[DONE]"
    assert after[-2]["finishReason"] == "stop"
    assert repeated[0] == before[0] and texts_of(repeated) == texts_of(after)
    assert gone.status_code == 204
    async with open_store(db_url) as store:
        stored = await store.messages.list("survivor-chat-01")
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert all(m.is_finished for m in stored if m.role is Role.ASSISTANT)
    assert texts_of(after) == [stored[3].text] == [f"{FIRST} {SECOND} "]
    assert stored[3].text.startswith(texts_of(before)[0])  # what the first server sent


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_the_worker_stops_on_a_signal_it_inherited_as_ignored(
    sqlite_url: str, processes: Processes, signum: int, status: int
) -> None:
    def ignore_both() -> None:  # as nohup and non-interactive shells start a process
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    worker = WorkerProcess(sqlite_url, "--demo", owner=processes, preexec_fn=ignore_both)
    worker.start()
    assert worker.process is not None
    worker.process.send_signal(signum)
    code, err = worker.wait(30)
    assert code == status, err
    assert "worker stopped" in err


AGENT = textwrap.dedent(
    """
    from messagestore import FinishReason


    async def run_turn(turn):
        reply = await turn.reply(model="echo")
        reply.append_text("echo: " + turn.text)
        reply.add_finish(FinishReason.END_TURN)
        await turn.store.messages.update(reply)


    not_async = print
    """
)


async def test_the_worker_runs_the_agent_it_is_named(
    sqlite_url: str, processes: Processes, tmp_path: Path
) -> None:
    (tmp_path / "echo_agent_for_worker.py").write_text(AGENT, encoding="utf-8")
    WorkerProcess(
        sqlite_url, "--agent", "echo_agent_for_worker:run_turn", owner=processes, cwd=tmp_path
    ).start()

    async def never(turn: Turn) -> None:
        raise AssertionError("this dispatcher only submits")

    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("worker")
        receipt = await Dispatcher(store, never).submit(session.id, "hello worker")
        async with asyncio.timeout(TIMEOUT):
            assert await receipt.outcome() is TurnOutcome.COMPLETED
        stored = await store.messages.list(session.id)
    assert [m.text for m in stored] == ["hello worker", "echo: hello worker"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("no_colon", "MODULE:FUNCTION"),
        ("no_such_module_here:run_turn", "cannot import"),
        ("echo_agent_for_worker:missing", "has no 'missing'"),
        ("echo_agent_for_worker:not_async", "not a coroutine function"),
    ],
)
def test_the_worker_refuses_an_agent_it_cannot_run(
    sqlite_url: str, processes: Processes, tmp_path: Path, spec: str, words: str
) -> None:
    (tmp_path / "echo_agent_for_worker.py").write_text(AGENT, encoding="utf-8")
    result = processes.run(
        [sys.executable, "-m", "messagestore", "--url", sqlite_url, "worker", "--agent", spec],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert words in result.stderr and result.stderr.count("\n") == 1
