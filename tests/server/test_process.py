"""``messagestore serve`` as a real process: SSE resumed with Last-Event-ID at random points of
a long stream written by another process, the address and token rules, and Ctrl-C / SIGTERM
that end open streams and exit cleanly. On SQLite and PostgreSQL. Every server belongs to the
``processes`` fixture, which ends it after the test whatever happened."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys

import httpx
import pytest

from messagestore import FinishReason, Role, open_store
from tests.support.processes import Processes
from tests.support.server_helpers import ROOT, ServerProcess, SSEReader
from tests.support.wire import WireView

TIMEOUT = 60
SEED = random.randrange(1 << 30)


async def test_reconnects_at_random_points_lose_nothing_and_repeat_nothing(
    db_url: str, processes: Processes
) -> None:
    rng = random.Random(SEED)
    with ServerProcess(db_url, owner=processes) as server:
        async with (
            open_store(db_url) as store,
            httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client,
        ):
            session = await store.sessions.create("long")
            snapshot = (await client.get(f"/api/sessions/{session.id}/messages")).json()
            replies = 6
            words = 60

            async def write() -> list[str]:
                ids = []
                for r in range(replies):
                    reply = await store.messages.create(session.id, role=Role.ASSISTANT)
                    ids.append(reply.id)
                    for w in range(words):
                        reply.append_text(f"r{r}w{w} ")
                        await store.messages.update(reply)
                        await asyncio.sleep(0.01)
                    reply.add_finish(FinishReason.END_TURN)
                    await store.messages.update(reply)
                doomed = await store.messages.create(session.id, role=Role.USER)
                await store.messages.delete(doomed.id)
                return ids

            writer = asyncio.create_task(write())
            seen: set[tuple[str, int]] = set()
            view = WireView()  # keeps its copies across connections, applying every delta
            texts: dict[str, str] = {}
            resume: str | None = None
            connections = 0
            deleted = False
            url = f"/api/events?session_id={session.id}&since={snapshot['revision']}"
            async with asyncio.timeout(TIMEOUT):
                while not (writer.done() and deleted):
                    connections += 1
                    cut = rng.randint(1, 8)  # events before this client drops the connection
                    headers = {"last-event-id": resume} if resume is not None else {}
                    reader = SSEReader(last_event_id=resume)
                    count = 0
                    async with client.stream("GET", url, headers=headers) as response:
                        assert response.status_code == 200
                        async for chunk in response.aiter_text():
                            stop = False
                            for event in reader.feed(chunk):
                                if event.comment is not None:
                                    continue
                                payload = json.loads(event.data)
                                key = (payload["id"], payload["revision"])
                                assert key not in seen, f"repeated {key} (seed {SEED})"
                                seen.add(key)
                                view.take(event)
                                if event.event == "deleted":
                                    deleted = True
                                else:
                                    text = view.messages[payload["id"]].text
                                    assert text.startswith(texts.get(payload["id"], ""))
                                    texts[payload["id"]] = text
                                count += 1
                                # Every event of a chunk is handled (the reader's resume point
                                # is past all of them); the connection drops after the chunk.
                                stop = count >= cut
                            resume = reader.last_event_id
                            if stop or (writer.done() and deleted):
                                break
            await writer
            assert view.failures == [], f"seed {SEED}: {view.failures[:3]}"
            assert view.disagreements(await store.messages.list(session.id)) == [], SEED
            assert view.applied > 0  # deltas, also right after a resumed connection's replay
            assert connections > 5, connections


def test_refuses_other_addresses_without_a_token(sqlite_url: str, processes: Processes) -> None:
    result = processes.run(
        [sys.executable, "-m", "messagestore", "--url", sqlite_url, "serve", "--host", "0.0.0.0"],
        cwd=ROOT,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr and "--token" in result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-streams", "0"], "--max-streams must be at least 1"),
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--header-timeout", "0"], "--header-timeout must be positive"),
        (["--header-timeout", "inf"], "--header-timeout must be positive"),
    ],
)
def test_refuses_limits_that_are_no_limits(
    sqlite_url: str, processes: Processes, option: list[str], message: str
) -> None:
    result = processes.run(
        [sys.executable, "-m", "messagestore", "--url", sqlite_url, "serve", *option],
        cwd=ROOT,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"messagestore: error: {message}, not ")
    assert len(result.stderr.strip().splitlines()) == 1


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_stops_on_a_signal_it_inherited_as_ignored(
    sqlite_url: str, processes: Processes, sig: int, status: int
) -> None:
    """Started the way a background job of a non-interactive shell is (both signals ignored),
    the server still stops on either."""
    server = ServerProcess(sqlite_url, owner=processes, preexec_fn=_ignore_stop_signals).start()
    server.signal(sig)
    code, stderr = server.wait(TIMEOUT)
    assert code == status, stderr
    assert "stopped; everything is flushed" in stderr


async def test_token_on_a_real_server(sqlite_url: str, processes: Processes) -> None:
    token = "a-long-enough-token"
    with ServerProcess(sqlite_url, "--token", token, owner=processes) as server:
        assert any(f"?token={token}" in line for line in server.stderr_lines)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            assert (await client.get("/")).status_code == 401
            assert (await client.get("/api/sessions")).status_code == 401
            auth = {"authorization": f"Bearer {token}"}
            assert (await client.get("/api/sessions", headers=auth)).status_code == 200


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
async def test_a_signal_ends_open_streams_and_exits(
    db_url: str, processes: Processes, sig: int, status: int
) -> None:
    server = ServerProcess(db_url, owner=processes).start()
    async with (
        open_store(db_url) as store,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        session = await store.sessions.create("open")
        reply = await store.messages.create(session.id, role=Role.ASSISTANT)
        opened = asyncio.Event()

        async def hold(path: str) -> bytes:
            async with client.stream("GET", path) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    opened.set()
                return body

        async with asyncio.timeout(TIMEOUT):
            events = asyncio.create_task(hold(f"/api/events?session_id={session.id}"))
            await opened.wait()
            opened.clear()
            ui = asyncio.create_task(hold(f"/api/messages/{reply.id}/ui-stream"))
            await opened.wait()
            server.signal(sig)
            # Both responses end by themselves (the reply never finishes: no [DONE]).
            assert b"retry:" in await events
            assert b"[DONE]" not in await ui
    code, stderr = await asyncio.to_thread(server.wait, TIMEOUT)
    assert code == status, stderr
    assert "stopped; everything is flushed" in stderr
    assert "Traceback" not in stderr


async def test_input_posted_to_one_server_streams_from_the_other(
    db_url: str, processes: Processes
) -> None:
    # A only takes input; B runs the simulated agent. Both stream the same events.
    with (
        ServerProcess(db_url, owner=processes) as taker,
        ServerProcess(db_url, "--demo", "--demo-rate", "200", owner=processes) as runner,
    ):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            session = (await client.post(f"{taker.url}/api/sessions", json={"title": "two"})).json()
            since = (await client.get(f"{runner.url}/api/sessions/{session['id']}/messages")).json()
            url = f"{runner.url}/api/events?session_id={session['id']}&since={since['revision']}"
            posted = await client.post(
                f"{taker.url}/api/sessions/{session['id']}/inputs", json={"text": "hello there"}
            )
            assert posted.status_code == 202, posted.text
            view = WireView()
            reader = SSEReader()
            async with asyncio.timeout(TIMEOUT), client.stream("GET", url) as response:
                async for chunk in response.aiter_text():
                    for event in reader.feed(chunk):
                        if event.comment is None:
                            view.take(event)
                    replies = [m for m in view.messages.values() if m.role is Role.ASSISTANT]
                    if len(replies) == 2 and all(m.is_finished for m in replies):
                        break
            assert view.failures == []
            roles = sorted(m.role.value for m in view.messages.values())
            assert roles == ["assistant", "assistant", "tool", "user"]


async def test_ctrl_c_during_a_demo_reply_finishes_and_flushes_it(
    db_url: str, processes: Processes
) -> None:
    server = ServerProcess(db_url, "--demo", "--demo-rate", "10", owner=processes).start()
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        session = (await client.post("/api/sessions", json={"title": "stop"})).json()
        posted = await client.post(f"/api/sessions/{session['id']}/inputs", json={"text": "hi"})
        assert posted.status_code == 202
        reader = SSEReader()
        async with (
            asyncio.timeout(TIMEOUT),
            client.stream("GET", f"/api/events?session_id={session['id']}&since=0") as response,
        ):
            async for chunk in response.aiter_text():
                texts = [
                    json.loads(e.data)
                    for e in reader.feed(chunk)
                    if e.comment is None and '"thinking"' in e.data
                ]
                if texts:
                    break
        server.signal(signal.SIGINT)
    code, stderr = await asyncio.to_thread(server.wait, TIMEOUT)
    assert code == 130, stderr
    async with open_store(db_url) as store:
        messages = await store.messages.list(session["id"])
    replies = [m for m in messages if m.role is Role.ASSISTANT]
    assert replies and all(m.is_finished for m in replies)
    assert replies[-1].finish is not None
    assert replies[-1].finish.reason is FinishReason.CANCELED
