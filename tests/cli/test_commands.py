"""The ``messagestore`` command, end to end: every case runs ``python -m messagestore`` in a
subprocess against a temporary SQLite file (one case against PostgreSQL).

The demo runs once per module in ``--json`` mode and its report is checked for numbers that add
up and against the database itself; inspection commands run on a hand-built session that holds
every kind of part; error cases check the one-line message and the exit status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from messagestore import FinishReason, Message, Role, ToolCall, ToolResult, migrations, open_store
from messagestore.__main__ import main
from tests.support.paths import ROOT
from tests.support.processes import Processes

TIMEOUT = 60


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``python -m messagestore ARGS``; the embedded default is redirected to a scratch dir."""
    return subprocess.run(
        [sys.executable, "-m", "messagestore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=_env(cwd, env),
    )


def run_many(
    processes: Processes, cwd: Path, *commands: tuple[list[str], dict[str, str] | None]
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent ``(args, env)`` commands at the same time (the suite stays fast); the
    ``processes`` fixture ends any that a failure or timeout leaves running."""
    started = [
        processes.popen(
            [sys.executable, "-m", "messagestore", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=_env(cwd, env),
        )
        for args, env in commands
    ]
    done = []
    for process in started:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return done


def _env(cwd: Path | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MESSAGESTORE_URL", "COLUMNS")}
    env["XDG_DATA_HOME"] = str((cwd or Path.cwd()) / "xdg-data")
    env.update(extra or {})
    return env


def url_of(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("messagestore: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# -- the demo -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One short demo run: its parsed ``--json`` report and its database file."""
    tmp = tmp_path_factory.mktemp("demo")
    db = tmp / "demo.db"
    done = run_cli(
        "demo", "--duration", "2", "--sessions", "3", "--json", "--url", url_of(db), cwd=tmp
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), db


def test_demo_report_numbers_add_up(demo: tuple[dict[str, Any], Path]) -> None:
    report, db = demo
    assert report["database"] == str(db)
    assert report["interrupted"] is False
    assert report["settings"]["sessions"] == 3
    deltas, rows, transactions = (
        report["deltas_accepted"],
        report["rows_written"],
        report["transactions"],
    )
    assert deltas > 50
    assert 0 < transactions <= rows <= deltas
    assert report["write_reduction"] == round(deltas / rows, 2)
    assert report["transaction_reduction"] == round(deltas / transactions, 2)
    assert report["terminal_writes"] <= transactions
    assert report["write_failures"] == 0

    events = report["events"]
    # One subscriber (the UI): every published event ends in exactly one outcome, and the UI
    # drains everything it was delivered before its subscription ends.
    assert (
        events["delivered"]
        + events["conflated"]
        + events["dropped"]
        + events["must_deliver_dropped"]
        == events["published"]
    )
    assert events["received_by_ui"] == events["delivered"]
    assert sum(events["received_by_type"].values()) == events["received_by_ui"]
    assert events["received_by_type"]["created"] == report["messages_created"]

    stale = report["staleness_ms"]
    assert stale["rows"] == rows
    assert 0 <= stale["p50"] <= stale["p99"] <= stale["max"]

    verified = report["verified"]
    assert verified["ok"] is True, verified["problems"]
    assert verified["problems"] == []
    assert verified["complete"] == verified["finished_messages"] == report["messages_finished"]
    assert report["messages_finished"] > 0
    assert verified["ui_matches"] == verified["messages"] == report["messages_created"]


def test_demo_finished_messages_are_complete_in_the_database(
    demo: tuple[dict[str, Any], Path],
) -> None:
    report, db = demo

    async def read() -> list[Message]:
        async with open_store(url_of(db)) as store:
            return [m for s in report["session_ids"] for m in await store.messages.list(s)]

    messages = asyncio.run(read())
    assert len(messages) == report["messages_created"]
    assistant = [m for m in messages if m.role is Role.ASSISTANT]
    assert all(m.is_finished for m in assistant)
    assert sum(m.is_finished for m in messages) == report["messages_finished"]
    for message in assistant:
        assert message.text or message.tool_calls
        assert all(call.finished for call in message.tool_calls)
    results = {r.tool_call_id for m in messages for r in m.tool_results}
    assert {c.id for m in assistant for c in m.tool_calls} <= results


def test_demo_human_report_is_plain_text_when_piped(tmp_path: Path) -> None:
    done = run_cli("demo", "--duration", "1", "--sessions", "2", "--rate", "60", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    default_db = tmp_path / "xdg-data" / "messagestore" / "messages.db"
    assert default_db.exists()  # the embedded default (XDG_DATA_HOME points into tmp_path)
    for label in ("deltas accepted", "rows written", "transactions", "events delivered"):
        assert label in done.stdout
    assert "staleness p50/p99" in done.stdout
    assert "verified" in done.stdout and "ok" in done.stdout
    assert str(default_db) in done.stdout
    assert "\x1b" not in done.stdout + done.stderr  # no terminal escapes when not a TTY


def _wait_for_sessions(db: Path, count: int, *, deadline: float) -> bool:
    """Poll (test-side, bounded) until the SQLite file holds ``count`` sessions."""
    while time.monotonic() < deadline:
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
                if conn.execute("SELECT count(*) FROM sessions").fetchone()[0] >= count:
                    return True
        except sqlite3.OperationalError:  # no file or no table yet
            pass
        time.sleep(0.1)
    return False


def test_demo_ctrl_c_flushes_and_reports(tmp_path: Path, processes: Processes) -> None:
    db = tmp_path / "interrupted.db"
    process = processes.popen(
        [
            sys.executable,
            "-m",
            "messagestore",
            "demo",
            "--json",
            "--duration",
            "60",
            "--sessions",
            "2",
            "--url",
            url_of(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path, None),
    )
    # The workload creates its sessions after the demo installed its SIGINT handler.
    assert _wait_for_sessions(db, 2, deadline=time.monotonic() + 30)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, stderr
    report = json.loads(stdout)
    assert report["interrupted"] is True
    assert report["elapsed_seconds"] < 30
    assert report["verified"]["ok"] is True, report["verified"]
    assert report["messages_finished"] > 0
    assert "interrupted" in stderr


@pytest.mark.postgres
def test_demo_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    done = run_cli(
        "demo", "--json", "--duration", "1", "--sessions", "2", "--url", postgres_url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"]["ok"] is True
    assert report["database"] == postgres_url


# -- inspection ---------------------------------------------------------------------------

PNG = bytes(range(256)) * 4


async def _craft(url: str) -> dict[str, str]:
    """A session with every kind of part, and an assistant message that never finished."""
    async with open_store(url) as store:
        session = await store.sessions.create("Fix the *flaky* test [urgent]")
        user = await store.messages.create(session.id, role=Role.USER)
        user.append_text("Why does `test_x` fail?")
        user.add_image_url("https://example.com/screen.png", "high")
        user.add_binary("trace.bin", "application/octet-stream", PNG)
        await store.messages.update(user)
        reply = await store.messages.create(session.id, role=Role.ASSISTANT, model="sim-1")
        reply.append_reasoning("Look at the fixture first.")
        reply.finish_reasoning()
        reply.append_text("Let me grep for it.")
        reply.add_tool_call(ToolCall("call-1", "grep", '{"pattern": "```"}', finished=True))
        reply.add_finish(FinishReason.TOOL_USE)
        await store.messages.update(reply)
        await store.messages.create(
            session.id,
            role=Role.TOOL,
            parts=[ToolResult("call-1", "grep", "no match", metadata="exit=1", is_error=True)],
        )
        dangling = await store.messages.create(session.id, role=Role.ASSISTANT)
        dangling.append_text("I was cut off mid")
        await store.messages.update(dangling)
        other = await store.sessions.create("another session")
        return {"session": session.id, "other": other.id, "reply": reply.id}


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[str, dict[str, str]]:
    url = url_of(tmp_path / "crafted.db")
    return url, asyncio.run(_craft(url))


def test_sessions_table_and_ids(
    crafted: tuple[str, dict[str, str]], tmp_path: Path, processes: Processes
) -> None:
    url, ids = crafted
    table, quiet = run_many(
        processes,
        tmp_path,
        (["sessions", "--url", url], None),
        (["sessions", "-q", "--url", url], None),
    )
    assert table.returncode == 0, table.stderr
    assert ids["session"] in table.stdout and ids["other"] in table.stdout
    assert "Fix the *flaky* test [urgent]" in table.stdout
    assert "2 session(s)" in table.stdout
    assert quiet.stdout.split() == [ids["other"], ids["session"]]  # newest first


def test_show_renders_every_part(crafted: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, ids = crafted
    # --url before the command works as well as after it; a unique id prefix is enough.
    done = run_cli("--url", url, "show", ids["session"][:8], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for fragment in (
        "Fix the *flaky* test [urgent]",  # rich markup in data is printed, not interpreted
        "Why does `test_x` fail?",
        "image: https://example.com/screen.png (detail: high)",
        "binary: trace.bin (application/octet-stream, 1,024 bytes)",
        "thinking",
        "Look at the fixture first.",
        "→ tool call grep(",
        "call-1, finished",
        "← error from grep [call-1]: no match",
        "metadata: exit=1",
        "finished: tool_use",
        "I was cut off mid",
        "no finish",
    ):
        assert fragment in out, fragment
    assert "\x1b" not in out


def test_export_json_is_machine_readable(
    crafted: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, ids = crafted
    done = run_cli("export", ids["session"], "--format", "json", "--url", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["format"] == "messagestore-export"
    assert document["session"]["id"] == ids["session"]
    assert [m["role"] for m in document["messages"]] == ["user", "assistant", "tool", "assistant"]
    types = [p["type"] for m in document["messages"] for p in m["parts"]]
    assert set(types) == {
        "text",
        "image_url",
        "binary",
        "reasoning",
        "tool_call",
        "tool_result",
        "finish",
    }
    parts = {p["type"]: p["data"] for m in document["messages"] for p in m["parts"]}
    assert base64.b64decode(parts["binary"]["data"]) == PNG
    assert parts["tool_call"] == {
        "id": "call-1",
        "name": "grep",
        "input": '{"pattern": "```"}',
        "finished": True,
        "provider_executed": False,
    }
    assert parts["tool_result"]["is_error"] is True
    assert parts["finish"]["reason"] == "tool_use"
    datetime.fromisoformat(parts["finish"]["time"])
    assert [m["finished"] for m in document["messages"]] == [False, True, False, False]


def test_export_markdown_to_a_file(crafted: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, ids = crafted
    target = tmp_path / "chat.md"
    done = run_cli(
        "export",
        ids["session"],
        "--format",
        "markdown",
        "-o",
        str(target),
        "--url",
        url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# Fix the *flaky* test [urgent]\n")
    for fragment in (
        "## User · ",
        "## Assistant (sim-1) · ",
        "<details><summary>Reasoning</summary>",
        "**Tool call** `grep` (`call-1`, finished)",
        '````\n{"pattern": "```"}\n````',  # the fence outgrows the backticks inside
        "**Tool error** `grep` (`call-1`)",
        "![image: high](https://example.com/screen.png)",
        "*Attachment: `trace.bin` (application/octet-stream, 1,024 bytes)*",
        "*Finished: tool_use at ",
        "*No finish: still streaming, or interrupted.*",
    ):
        assert fragment in text, fragment


# -- db -----------------------------------------------------------------------------------


def test_db_history_current_upgrade(tmp_path: Path, processes: Processes) -> None:
    db = tmp_path / "fresh.db"
    head = migrations.head()
    history, current = run_many(
        processes,
        tmp_path,
        (["db", "history"], None),
        (["db", "current", "--url", url_of(db)], None),
    )
    assert history.returncode == 0, history.stderr
    assert f"-> {head} (head)" in history.stdout
    assert "<base> ->" in history.stdout
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith("none")
    assert not db.exists()  # looking never creates a database

    upgraded = run_cli("db", "upgrade", "--url", url_of(db), cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from an empty database to {head}" in upgraded.stdout
    by_env = {"MESSAGESTORE_URL": url_of(db)}
    again, current = run_many(
        processes, tmp_path, (["db", "upgrade"], by_env), (["db", "current"], by_env)
    )
    assert f"already at the newest revision {head}" in again.stdout
    assert current.stdout.strip() == f"{head} (head)"


# -- errors -------------------------------------------------------------------------------


def test_errors_are_one_line_with_status_1(
    crafted: tuple[str, dict[str, str]], tmp_path: Path, processes: Processes
) -> None:
    url, _ids = crafted
    nope = tmp_path / "nope.db"
    # A server that refuses, and one that accepts at the TCP level and never answers (a
    # listening socket nobody accepts from): the second must hit the connect timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        cases: list[tuple[list[str], dict[str, str] | None, tuple[str, ...]]] = [
            (["sessions", "--url", "mysql://db/chat"], None, ("URL scheme 'mysql'",)),
            (["demo"], {"MESSAGESTORE_URL": "::not a url::"}, ("not a database URL",)),
            (["sessions", "--url", url_of(nope)], None, ("no database at", "nope.db")),
            (["show", "no-such-session", "--url", url], None, ("session not found: 'no-such",)),
            (
                ["sessions", "--url", "postgresql+asyncpg://127.0.0.1:1/x"],
                None,
                ("cannot connect to the database at postgresql+asyncpg://127.0.0.1:1/x",),
            ),
            (
                ["sessions", "--url", f"postgresql+asyncpg://u:pw@127.0.0.1:{port}/x"],
                None,
                ("cannot reach the database server", "u:***@", "no answer within 5 s"),
            ),
        ]
        started = time.monotonic()
        results = run_many(processes, tmp_path, *((args, env) for args, env, _ in cases))
        elapsed = time.monotonic() - started
    for (args, _, fragments), done in zip(cases, results, strict=True):
        assert_one_line_error(done, *fragments)
        assert "Traceback" not in done.stderr, args
    assert not nope.exists()  # looking never creates a database
    # The silent server is given up on after the 5 s connect timeout, well before a driver's
    # default of 60 s (a loose bound: six processes start on a shared machine).
    assert elapsed < 55


def test_database_of_a_newer_schema(
    crafted: tuple[str, dict[str, str]], tmp_path: Path, processes: Processes
) -> None:
    url, _ids = crafted
    path = url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'from_the_future'")
    conn.close()
    sessions, upgrade, current = run_many(
        processes,
        tmp_path,
        (["sessions", "--url", url], None),
        (["db", "upgrade", "--url", url], None),
        (["db", "current", "--url", url], None),
    )
    for done in (sessions, upgrade):
        assert_one_line_error(done, "from_the_future", "upgrade messagestore")
    assert current.returncode == 0
    assert "from_the_future (unknown" in current.stdout


def test_inspection_refuses_an_older_schema(
    crafted: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    # Inspection reads without migrating; an older revision is named with the fix.
    url, _ids = crafted
    newest = migrations.history()[0]
    if not newest.down_revisions:
        pytest.skip("only one migration so far")
    with sqlite3.connect(url.removeprefix("sqlite+aiosqlite:///")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (newest.down_revisions[0],))
    conn.close()
    done = run_cli("sessions", "--url", url, cwd=tmp_path)
    assert_one_line_error(done, "older than this messagestore", "messagestore db upgrade")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    # --debug before the command (after it works like --url after it, tested above).
    done = run_cli("--debug", "sessions", "--url", "mysql://db/chat", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("messagestore: error: ")


def test_usage_error_exits_2(tmp_path: Path) -> None:
    done = run_cli("demo", "--sessions", "0", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "usage: messagestore demo" in done.stderr
    assert "--sessions: must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["no-such-command"],
        ["demo", "--duration", "-1"],
        ["demo", "--rate", "nan"],
        ["demo", "--debounce", "-0.1"],
        ["export", "x", "--format", "pdf"],
        ["db"],
    ],
)
def test_usage_errors_exit_2_in_process(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse fails before anything runs, so these need no subprocess of their own.
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert "usage: messagestore" in capsys.readouterr().err


def test_console_script_is_declared() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'messagestore = "messagestore.__main__:main"' in pyproject
