"""The change-feed migration (``alembic/versions/0003_feed.py``) on a database with data, on
SQLite and PostgreSQL: existing rows get revisions in creation order and the counter starts
past them; a store opened on it replays them and numbers new changes after them; downgrade
keeps every row and its content; upgrading again works.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from messagestore import FinishReason, Role, Text, open_store
from messagestore._codec import encode_parts
from messagestore._database._engine import create_engine
from messagestore._database._migrate import alembic_config, current_revision_job
from messagestore._database._schema import UTCDateTime
from messagestore._database._tx import Tx
from messagestore._model import Finish, utc_now
from pubsub import EventType
from tests.support.feed_helpers import Ledger, follow

FEED = "0003"
BEFORE = "0002"


def _migrate(conn: Connection, action: str, target: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = conn
    getattr(command, action)(config, target)


async def _run(url: str, job: Any) -> Any:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(job)
    finally:
        await engine.dispose()


_sessions = sa.table(
    "sessions",
    sa.column("id", sa.String()),
    sa.column("title", sa.Text()),
    sa.column("message_count", sa.Integer()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
)
_messages = sa.table(
    "messages",
    sa.column("id", sa.String()),
    sa.column("session_id", sa.String()),
    sa.column("role", sa.String()),
    sa.column("parts", sa.Text()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
    sa.column("writer_id", sa.String()),
)


def _fill_0002(conn: Connection) -> dict[str, str]:
    """Two sessions and four messages as a 0002 store would have left them (the unfinished
    assistant message was written by the pre-0002 writer that no longer runs)."""
    now = utc_now()
    old = now - timedelta(hours=1)
    for sid, title, count, at in (("s-old", "old", 3, old), ("s-new", "new", 1, now)):
        conn.execute(
            sa.insert(_sessions).values(
                id=sid, title=title, message_count=count, created_at=at, updated_at=at
            )
        )
    finish = Finish(FinishReason.END_TURN, old)
    rows = [
        ("m-user", "s-old", Role.USER, [Text("question")], None),
        ("m-done", "s-old", Role.ASSISTANT, [Text("answer"), finish], "pre-0002"),
        ("m-cut", "s-old", Role.ASSISTANT, [Text("half an ans")], "pre-0002"),
        ("m-other", "s-new", Role.USER, [Text("hello")], None),
    ]
    for mid, sid, role, parts, writer in rows:
        conn.execute(
            sa.insert(_messages).values(
                id=mid,
                session_id=sid,
                role=role.value,
                parts=encode_parts(parts),
                created_at=old,
                updated_at=old,
                writer_id=writer,
            )
        )
    return {mid: sid for mid, sid, *_ in rows}


def _feed_columns(conn: Connection) -> dict[str, Any]:
    messages = conn.execute(
        sa.text(
            "SELECT id, seq, revision, created_revision, in_progress FROM messages ORDER BY seq"
        )
    ).all()
    sessions = conn.execute(
        sa.text("SELECT id, revision, created_revision FROM sessions ORDER BY revision")
    ).all()
    counter = conn.execute(sa.text("SELECT revision, compacted_revision FROM feed_state")).one()
    return {"messages": messages, "sessions": sessions, "counter": tuple(counter)}


def _content(conn: Connection) -> dict[str, Any]:
    return {
        "sessions": conn.execute(
            sa.text("SELECT id, title, message_count FROM sessions ORDER BY id")
        ).all(),
        "messages": conn.execute(
            sa.text("SELECT id, session_id, role, parts FROM messages ORDER BY seq")
        ).all(),
    }


def _tables(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(table)}


async def test_upgrade_numbers_existing_rows_and_downgrade_keeps_them(db_url: str) -> None:
    await _run(db_url, partial(_migrate, action="upgrade", target=BEFORE))
    ids = await _run(db_url, _fill_0002)
    before = await _run(db_url, _content)

    await _run(db_url, partial(_migrate, action="upgrade", target=FEED))
    assert await _run(db_url, lambda conn: current_revision_job(Tx(conn))) == (FEED,)
    state = await _run(db_url, _feed_columns)
    seqs = [row.seq for row in state["messages"]]
    assert [row.revision for row in state["messages"]] == seqs  # creation order
    assert [row.created_revision for row in state["messages"]] == seqs
    assert [row.id for row in state["sessions"]] == ["s-old", "s-new"]  # by creation time
    assert [row.revision for row in state["sessions"]] == [max(seqs) + 1, max(seqs) + 2]
    assert state["counter"] == (max(seqs) + 2, 0)
    in_progress = {row.id for row in state["messages"] if row.in_progress}
    assert in_progress == {"m-cut"}  # unfinished, by a writer: the sweep looks at it
    assert await _run(db_url, _content) == before

    async with open_store(db_url) as store:  # recovery repairs m-cut: a change like others
        replay = store.messages.subscribe(since=0)
        repaired = await store.messages.get("m-cut")
        assert repaired.finish is not None
        assert repaired.finish.reason is FinishReason.INTERRUPTED
        assert repaired.revision > state["counter"][0]
        ledger = Ledger()
        await follow(replay, ledger, until=repaired.revision)
        assert {r.message_id for r in ledger.received} == set(ids)
        assert all(r.type is EventType.CREATED for r in ledger.received)
        added = await store.messages.create("s-new", role=Role.USER, parts=[Text("after")])
        assert added.revision > repaired.revision
        await store.messages.delete("m-user")  # a tombstone the downgrade must drop
        replay.close()
    with_feed = await _run(db_url, _content)

    await _run(db_url, partial(_migrate, action="downgrade", target=BEFORE))
    assert await _run(db_url, lambda conn: current_revision_job(Tx(conn))) == (BEFORE,)
    assert {"feed_state", "tombstones"}.isdisjoint(await _run(db_url, _tables))
    assert "revision" not in await _run(db_url, partial(_columns, table="messages"))
    assert "revision" not in await _run(db_url, partial(_columns, table="sessions"))
    assert await _run(db_url, _content) == with_feed  # every row and its content kept

    await _run(db_url, partial(_migrate, action="upgrade", target=FEED))
    again = await _run(db_url, _feed_columns)
    assert [row.revision for row in again["messages"]] == [row.seq for row in again["messages"]]
    async with open_store(db_url) as store:
        newest = await store.messages.create("s-old", role=Role.USER)
        assert newest.revision > again["counter"][0]
        assert {m.id for m in await store.messages.list("s-new")} == {"m-other", added.id}


async def test_upgrade_of_an_empty_0002_database(db_url: str) -> None:
    await _run(db_url, partial(_migrate, action="upgrade", target=BEFORE))
    await _run(db_url, partial(_migrate, action="upgrade", target=FEED))
    assert (await _run(db_url, _feed_columns))["counter"] == (0, 0)
    async with open_store(db_url) as store:
        session = await store.sessions.create("first")
        assert session.revision == 1
