"""``messagestore watch``, end to end: the command runs in a subprocess and tails the change
feed of a database that the test (another process) writes to, on SQLite and PostgreSQL.

Every watcher belongs to the ``processes`` fixture: a test that fails or times out still ends
it, so no watcher outlives its test holding database connections.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from messagestore import (
    Finish,
    FinishReason,
    Message,
    MessageDelta,
    Role,
    Store,
    Text,
    ToolCall,
    ToolResult,
    open_store,
)
from messagestore._cli._watch import Lines
from messagestore._database._schema import tombstones
from messagestore._model import utc_now
from messagestore.testing import prune_tombstones
from pubsub import Event, EventType
from tests.cli.test_commands import _env, assert_one_line_error, run_cli, url_of
from tests.support.feed_helpers import WAIT, database_truth
from tests.support.processes import Processes
from tests.support.wire import fields

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _ignore_stop_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM ignored, as a background job of a
    non-interactive shell (or ``nohup`` and CI runners) starts a command."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


async def _watch(
    processes: Processes, tmp_path: Path, *args: str, ignoring_signals: bool = False
) -> asyncio.subprocess.Process:
    return await processes.exec(
        sys.executable,
        "-m",
        "messagestore",
        "watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=_env(tmp_path, None),
        preexec_fn=_ignore_stop_signals if ignoring_signals else None,
    )


async def _lines(process: asyncio.subprocess.Process, count: int) -> list[str]:
    """The next ``count`` lines the command prints (bounded)."""
    assert process.stdout is not None
    lines = []
    async with asyncio.timeout(WAIT):
        for _ in range(count):
            line = await process.stdout.readline()
            if not line:
                assert process.stderr is not None
                raise AssertionError(f"watch ended: {(await process.stderr.read()).decode()}")
            lines.append(line.decode().rstrip("\n"))
    return lines


async def _interrupt(
    process: asyncio.subprocess.Process, signum: int = signal.SIGINT
) -> tuple[int, str]:
    """Send ``signum`` and wait (bounded) for the command to exit: its status and stderr."""
    process.send_signal(signum)
    async with asyncio.timeout(WAIT):
        _out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def _conversation(store: Store, session_id: str) -> list[str]:
    """A user question, a streamed reply with a tool call, its result, a deleted draft."""
    user = await store.messages.create(
        session_id, role=Role.USER, parts=[Text("Find  it,\nplease")]
    )
    reply = await store.messages.create(session_id, role=Role.ASSISTANT, model="m")
    reply.append_text("Looking ")
    reply.add_tool_call(ToolCall("call-1", "grep", '{"q": "it"}', finished=True))
    await store.messages.update(reply)
    reply.add_finish(FinishReason.TOOL_USE)
    await store.messages.update(reply)
    result = ToolResult("call-1", "grep", "found")
    tool = await store.messages.create(session_id, role=Role.TOOL, parts=[result])
    draft = await store.messages.create(session_id, role=Role.ASSISTANT)
    await store.messages.delete(draft.id)
    return [user.id, reply.id, tool.id, draft.id]


async def test_watch_whole_prints_each_change_another_process_commits(
    db_url: str, tmp_path: Path, processes: Processes
) -> None:
    """``--whole``: every line shows the whole message, as before deltas."""
    async with open_store(db_url) as store:
        session = await store.sessions.create("watched")
        since = (await database_truth(db_url)).counter
        watcher = await _watch(
            processes, tmp_path, "--url", db_url, "--since", str(since), "--whole"
        )
        try:
            first = await store.messages.create(session.id, role=Role.USER, parts=[Text("hi")])
            (line,) = await _lines(watcher, 1)
            assert line == f'{first.revision} created {session.id} {first.id} user "hi"'
            user, reply, tool, draft = await _conversation(store, session.id)
            last = (await database_truth(db_url)).deleted[draft]
            lines = []
            while not lines or not lines[-1].startswith(f"{last} "):
                lines += await _lines(watcher, 1)
        finally:
            code, err = await _interrupt(watcher)
    assert code == 130, err
    assert err == "messagestore: interrupted\n"
    revisions = [int(line.split()[0]) for line in lines]
    assert revisions == sorted(set(revisions))  # one line per event, in revision order
    by_message: dict[str, list[str]] = {}
    for line in lines:
        assert line.split()[2] == session.id
        by_message.setdefault(line.split()[3], []).append(line)
    assert by_message[user][-1].endswith(f'{user} user "Find it, please"')  # whitespace folded
    assert by_message[reply][-1].endswith(f'{reply} assistant "Looking" → grep ■ tool_use')
    assert by_message[tool][-1].endswith(f"{tool} tool ← grep")
    assert by_message[draft][-1].endswith(f"deleted {session.id} {draft} assistant (deleted)")


async def test_watch_json_replays_from_a_revision_for_one_session(
    db_url: str, tmp_path: Path, processes: Processes
) -> None:
    async with open_store(db_url) as store:
        mine = await store.sessions.create("mine")
        other = await store.sessions.create("other")
        await store.messages.create(other.id, role=Role.USER, parts=[Text("not shown")])
        ids = await _conversation(store, mine.id)
    watcher = await _watch(
        processes, tmp_path, "--url", db_url, "--since", "0", "--session", mine.id[:8], "--json"
    )
    try:
        lines = await _lines(watcher, 4)
    finally:
        code, _err = await _interrupt(watcher)
    assert code == 130
    events = [json.loads(line) for line in lines]
    assert [e["message"]["id"] for e in events] == ids  # replay: one newest state each
    assert [e["type"] for e in events] == ["created", "created", "created", "deleted"]
    assert {e["message"]["session_id"] for e in events} == {mine.id}
    assert [e["revision"] for e in events] == sorted(e["revision"] for e in events)
    reply = events[1]["message"]
    assert reply["finished"] is True
    assert [p["type"] for p in reply["parts"]] == ["text", "tool_call", "finish"]
    assert reply["parts"][1]["data"]["name"] == "grep"
    deleted = events[3]["message"]
    assert (deleted["role"], deleted["parts"]) == ("assistant", [])  # only id, session, role


async def test_watch_shows_what_each_change_changed(
    db_url: str, tmp_path: Path, processes: Processes
) -> None:
    """A message's first line is whole; each later change is a ``delta`` line saying what
    changed; ``--json`` prints the deltas, which rebuild every state from the whole line.
    The test writes one change at a time and waits for both watchers' lines for it, so each
    change is its own event."""
    async with open_store(db_url, debounce=0) as store:
        session = await store.sessions.create("deltas")
        since = str((await database_truth(db_url)).counter)
        human = await _watch(processes, tmp_path, "--url", db_url, "--since", since)
        machine = await _watch(processes, tmp_path, "--url", db_url, "--since", since, "--json")
        await store.messages.create(session.id, role=Role.USER, parts=[Text("hi")])  # running
        await _lines(human, 1)
        await _lines(machine, 1)
        reply = await store.messages.create(session.id, role=Role.ASSISTANT)
        states = [await store.messages.get(reply.id)]
        changes = [
            lambda m: m.append_reasoning("Let me think"),
            lambda m: m.append_reasoning(" harder"),
            lambda m: m.finish_reasoning(),
            lambda m: m.append_text("Hello"),
            lambda m: m.append_text(", world\n"),
            lambda m: m.add_tool_call(ToolCall("c1", "grep", '{"q"')),
            lambda m: m.add_tool_call(ToolCall("c1", "grep", '{"q": 1}')),
            lambda m: m.add_tool_call(ToolCall("c1", "grep", '{"q": 1}', finished=True)),
            lambda m: setattr(m, "model", "gpt-x"),
            lambda m: m.add_finish(FinishReason.TOOL_USE),
        ]
        shown, documents = [], []
        try:
            for line in await _lines(human, 1), await _lines(machine, 1):
                assert line  # the created reply, whole
            for change in changes:
                change(reply)
                await store.messages.update(reply)
                states.append(await store.messages.get(reply.id))
                shown += await _lines(human, 1)
                documents += [json.loads(line) for line in await _lines(machine, 1)]
            await store.messages.delete(reply.id)
            (deleted,) = await _lines(human, 1)
        finally:
            await _interrupt(human)
            await _interrupt(machine)
    head = f"{session.id} {reply.id} assistant"
    assert [line.split(" ", 1)[1] for line in shown] == [
        f'delta {head} thinking: "Let me think"',
        f'delta {head} +thinking: " harder"',
        f'delta {head} ~thinking: "Let me think harder" ✓',
        f'delta {head} "Hello"',
        f'delta {head} +", world\\n"',
        f'delta {head} → grep: "{{\\"q\\""',
        f'delta {head} +→ grep: ": 1}}"',
        f'delta {head} ~→ grep: "{{\\"q\\": 1}}" ✓',
        f'delta {head} ~model="gpt-x"',
        f"delta {head} ■ tool_use",
    ]
    assert [int(line.split()[0]) for line in shown] == [m.revision for m in states[1:]]
    assert deleted.endswith(f"deleted {head} (deleted)")
    # --json: the deltas rebuild every state, field by field, from the first.
    copy = states[0]
    for document, expected in zip(documents, states[1:], strict=True):
        assert document["type"] == "delta" and document["revision"] == expected.revision
        copy = MessageDelta.from_json(document["delta"]).apply(copy)
        assert fields(copy) == fields(expected)


def test_delta_lines_forget_finished_messages_and_stay_bounded() -> None:
    def state(revision: int, text: str, *, done: bool = False) -> Message:
        message = Message("m", "s", Role.ASSISTANT, [Text(text)], created_at=NOW, updated_at=NOW)
        if done:
            message.parts.append(Finish(FinishReason.END_TURN, NOW))
        message.revision = revision
        return message

    def updated(old: Message, new: Message) -> Event[Message]:
        return Event(EventType.UPDATED, new, MessageDelta.between(old, new))

    lines = Lines(as_json=False, deltas=True, remembered=1)
    a, b, c = state(1, "a"), state(2, "ab"), state(3, "ab", done=True)
    assert lines.line(Event(EventType.CREATED, a)).startswith("1 created")
    assert lines.line(updated(a, b)) == '2 delta s m assistant +"b"'
    assert lines.line(updated(b, c)) == "3 delta s m assistant ■ end_turn"
    d = state(4, "abc", done=True)
    assert lines.line(updated(c, d)).startswith("4 updated")  # finished: forgotten
    other = Message("o", "s", Role.ASSISTANT, [], created_at=NOW, updated_at=NOW)
    lines.line(Event(EventType.CREATED, a))
    lines.line(Event(EventType.CREATED, other))  # remembers one message: "m" is forgotten
    assert lines.line(updated(a, b)).startswith("2 updated")
    whole = Lines(as_json=False, deltas=False)
    whole.line(Event(EventType.CREATED, a))
    assert whole.line(updated(a, b)) == '2 updated s m assistant "ab"'


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["SIGINT", "SIGTERM"]
)
async def test_watch_stops_on_a_signal_it_inherited_as_ignored(
    db_url: str, tmp_path: Path, processes: Processes, signum: int, status: int
) -> None:
    """Started as a background job of a non-interactive shell starts it (SIGINT and SIGTERM
    ignored), the command still ends on either signal, with its status, and quietly."""
    async with open_store(db_url) as store:
        session = await store.sessions.create("nohup")
        await store.messages.create(session.id, role=Role.USER, parts=[Text("hi")])
    watcher = await _watch(
        processes, tmp_path, "--url", db_url, "--since", "0", ignoring_signals=True
    )
    await _lines(watcher, 1)  # it runs (its handlers are installed before it prints)
    code, err = await _interrupt(watcher, signum)
    assert code == status, err
    assert err == ("messagestore: interrupted\n" if signum == signal.SIGINT else "")


async def test_watch_into_head_ends_quietly(
    sqlite_url: str, tmp_path: Path, processes: Processes
) -> None:
    """``watch | head -n 2``: once ``head`` has its lines and leaves, the next event ends the
    command with status 0 and nothing on stderr."""
    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("piped")
        for n in range(3):
            await store.messages.create(session.id, role=Role.USER, parts=[Text(f"m{n}")])
        command = (
            f"{sys.executable} -m messagestore watch --since 0 --url {sqlite_url} 2>err.txt"
            " | head -n 2"
        )
        pipeline = await processes.exec(
            "bash",
            "-o",
            "pipefail",
            "-c",
            command,
            stdout=asyncio.subprocess.PIPE,
            cwd=tmp_path,
            env=_env(tmp_path, None),
            start_new_session=True,  # the fixture ends the whole pipeline, not just bash
        )
        finished = asyncio.ensure_future(pipeline.communicate())
        async with asyncio.timeout(WAIT):
            while not finished.done():  # keep writing: the command learns of the gone reader
                await store.messages.create(session.id, role=Role.USER)  # when it next writes
                await asyncio.wait([finished], timeout=0.2)
        out, _ = finished.result()
    assert pipeline.returncode == 0  # pipefail: the watch command's own status too
    assert len(out.decode().splitlines()) == 2
    assert (tmp_path / "err.txt").read_text() == ""


async def test_watch_since_a_compacted_revision_is_an_error(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("compacted")
        message = await store.messages.create(session.id, role=Role.USER)
        await store.messages.delete(message.id)
        async with store.engine.begin() as conn:
            await conn.execute(update(tombstones).values(deleted_at=utc_now() - timedelta(days=30)))
        assert await prune_tombstones(store) == 1
    done = await asyncio.to_thread(
        run_cli, "watch", "--since", "0", "--url", sqlite_url, cwd=tmp_path
    )
    assert_one_line_error(done, "revision 0 is compacted", "start again from a snapshot")


def test_watch_refuses_what_it_cannot_watch(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    done = run_cli("watch", "--url", url_of(missing), cwd=tmp_path)
    assert_one_line_error(done, "no database at", "missing.db")
    assert not missing.exists()  # watching never creates a database
    bad = run_cli("watch", "--since", "-3", "--url", url_of(missing), cwd=tmp_path)
    assert bad.returncode == 2
    assert "--since: must be a revision" in bad.stderr


async def test_watch_an_unknown_session_is_an_error(sqlite_url: str, tmp_path: Path) -> None:
    async with open_store(sqlite_url):
        pass
    done = await asyncio.to_thread(
        run_cli, "watch", "--session", "nope", "--url", sqlite_url, cwd=tmp_path
    )
    assert_one_line_error(done, "session not found: 'nope'")


def test_watch_is_listed_in_the_help(tmp_path: Path) -> None:
    done = run_cli("watch", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--session", "--since", "--json", "--whole"):
        assert option in done.stdout
