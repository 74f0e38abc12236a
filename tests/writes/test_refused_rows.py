"""A row the database refuses is refused alone: ``update()`` rejects what no row can
store, and a refused row neither holds its batch hostage nor slows the other messages.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import (
    InvalidMessage,
    Role,
    WriteFailed,
    batch_written,
    write_failed,
)
from tests.support.races import (
    bounded,
    opened,
)


async def refuse_writes_of(url: str, message_id: str) -> Callable[[], Awaitable[None]]:
    """Install a trigger that refuses every UPDATE of one message row; return its remover."""
    engine = create_async_engine(url)
    quoted = message_id.replace("'", "''")
    if url.startswith("sqlite"):
        install = [
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON messages "
            f"WHEN NEW.id = '{quoted}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        ]
        remove = ["DROP TRIGGER IF EXISTS refuse_one"]
    else:
        install = [
            "CREATE OR REPLACE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.id = '{quoted}' THEN "
            "RAISE check_violation USING MESSAGE = 'refused by test'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON messages "
            "FOR EACH ROW EXECUTE FUNCTION refuse_one()",
        ]
        remove = [
            "DROP TRIGGER IF EXISTS refuse_one ON messages",
            "DROP FUNCTION IF EXISTS refuse_one()",
        ]
    async with engine.begin() as conn:
        for statement in install:
            await conn.execute(text(statement))

    async def removed() -> None:
        async with engine.begin() as conn:
            for statement in remove:
                await conn.execute(text(statement))
        await engine.dispose()

    return removed


@pytest.mark.parametrize(
    ("field", "value"),
    [("is_summary_message", None), ("model", None), ("provider", 7), ("model", "nul\x00")],
)
async def test_update_refuses_a_field_the_row_cannot_store(
    db_url: str, field: str, value: object
) -> None:
    """``update()`` accepted ``is_summary_message=None``; every later group commit then
    failed its NOT NULL constraint, with every other message of the batch."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("unstorable")
        bad, good = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in "ab"]
        setattr(bad, field, value)
        with pytest.raises(InvalidMessage, match=field):
            await store.messages.update(bad)
        good.append_text("written")
        await store.messages.update(good)
        async with bounded("flush_all"):
            await store.messages.flush_all()
        assert (await store.messages.get(good.id)).text == "written"
        assert store.messages.stats().write_failures == 0


async def test_a_refused_row_does_not_hold_the_batch_hostage(db_url: str) -> None:
    """A failed batch must isolate the culprit: the other messages of the group commit
    are written and announced, the refused state stays buffered and its flush raises, and it is
    written once the database takes it again."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("hostage")
        culprit, *others = [
            await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(4)
        ]
        remove_trigger = await refuse_writes_of(db_url, culprit.id)
        async with store.messages.subscribe() as sub:
            for message in [culprit, *others]:
                message.append_text(f"text of {message.id}")
                await store.messages.update(message)
            async with bounded("flush_all"):
                with pytest.raises(WriteFailed):
                    await store.messages.flush_all()  # one group commit: the culprit fails
            for message in others:
                assert (await store.messages.get(message.id)).text == message.text
            assert (await store.messages.get(culprit.id)).text == ""
            async with bounded("flush of the refused message"):
                with pytest.raises(WriteFailed, match="refused by test"):
                    await store.messages.flush(culprit.id)
            assert store.messages.stats().pending_messages == 1
            async with bounded("the other messages' events"):
                seen: dict[str, str] = {}
                while any(seen.get(m.id) != m.text for m in others):
                    event = await sub.receive()
                    seen[event.payload.id] = event.payload.text
            assert culprit.id not in seen
            await remove_trigger()
            async with bounded("flush after the database takes the row again"):
                await store.messages.flush(culprit.id)
            assert (await store.messages.get(culprit.id)).text == culprit.text


async def test_a_refused_row_does_not_slow_the_other_messages_down(db_url: str) -> None:
    """A row the database keeps refusing backs off on its own. It used to put the
    whole flusher into backoff (every other message then waited up to 2 s between writes) and
    joined every tick, so each group commit fell back to writing row by row."""
    async with opened(db_url, debounce=0.01) as store:
        session = await store.sessions.create("slowed down")
        culprit, good = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in "ab"]
        remove_trigger = await refuse_writes_of(db_url, culprit.id)
        refusals = 0
        written = asyncio.Event()

        def on_failure(sender: object, **kwargs: Any) -> None:
            nonlocal refusals
            refusals += culprit.id in kwargs["message_ids"]

        def on_batch(sender: object, **kwargs: Any) -> None:
            written.set()

        write_failed.connect(on_failure)
        batch_written.connect(on_batch)
        try:
            culprit.append_text("refused")
            await store.messages.update(culprit)
            async with bounded("the good message's writes"):
                for n in range(20):  # each delta waits for its write: 20 ticks
                    good.append_text(f"<{n}>")
                    await store.messages.update(good)
                    while True:
                        written.clear()
                        if (await store.messages.get(good.id)).text == good.text:
                            break
                        await written.wait()
        finally:
            write_failed.disconnect(on_failure)
            batch_written.disconnect(on_batch)
            await remove_trigger()
        # With its own exponential backoff the culprit is tried a handful of times in 20
        # ticks; tried in every tick it would have been refused about 20 times.
        assert 1 <= refusals <= 10, refusals
        async with bounded("flush of the culprit"):
            await store.messages.flush(culprit.id)
        assert (await store.messages.get(culprit.id)).text == "refused"
