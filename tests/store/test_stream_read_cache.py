"""Reads of streaming messages start from what earlier reads found (``_stream_cache``).

What must hold: a read through the cache returns exactly what a read without it returns, for
the reader's own snapshot — never text a newer snapshot saw, never text of an older row or an
older stream of the same row — and reads that follow a live stream walk only the new append
rows.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from messagestore import FinishReason, Message, Role, Store, Text, ToolCall
from messagestore._database import _appends as appends
from messagestore._database._database import _sqlite_engine
from messagestore._database._engine import create_engine
from messagestore._database._rows import MESSAGE_COLUMNS, message_from_row
from messagestore._database._schema import messages
from messagestore._database._stream_cache import CachedStream, StreamCache
from messagestore._database._tx import Tx
from messagestore._store import StoreOptions, open_store_with

# -- the cache alone ---------------------------------------------------------------------------


def _entry(base: int, through: int, text: str = "x", appends_from: int = 1) -> CachedStream:
    return CachedStream(base, appends_from, through, {(0, 0): text}, through, None)


def test_an_entry_serves_only_its_row_its_stream_and_snapshots_that_reached_it() -> None:
    cache = StreamCache()
    cache.put(7, _entry(base=10, through=20, appends_from=11))
    assert cache.get(7, 10, 11, horizon=20) is not None
    assert cache.get(7, 10, 11, horizon=25) is not None
    assert cache.get(7, 10, 11, horizon=19) is None, "a snapshot older than the entry"
    assert cache.get(7, 12, 11, horizon=30) is None, "another row (rewritten since)"
    assert cache.get(7, 10, 13, horizon=30) is None, "another stream of the row"
    assert cache.get(8, 10, 11, horizon=30) is None


def test_an_older_read_never_replaces_a_newer_entry() -> None:
    cache = StreamCache()
    cache.put(1, _entry(base=10, through=30, text="newer"))
    cache.put(1, _entry(base=10, through=20, text="older"))
    assert cache.get(1, 10, 1, horizon=30) == _entry(base=10, through=30, text="newer")
    cache.put(1, _entry(base=5, through=40, text="older row"))
    assert cache.get(1, 10, 1, horizon=40) == _entry(base=10, through=30, text="newer")
    cache.put(1, _entry(base=50, through=60, text="rewritten"))
    assert cache.get(1, 50, 1, horizon=60) is not None
    assert len(cache) == 1 and cache.chars == len("rewritten")


def test_the_cache_is_bounded_in_messages_and_characters() -> None:
    cache = StreamCache(max_messages=3, max_chars=10)
    for seq in range(5):
        cache.put(seq, _entry(base=1, through=2, text="ab"))
    assert len(cache) == 3 and cache.chars == 6
    assert cache.get(0, 1, 1, horizon=2) is None and cache.get(4, 1, 1, horizon=2) is not None
    cache.get(2, 1, 1, horizon=2)  # used after 4: the order is now 3, 4, 2
    cache.put(9, _entry(base=1, through=2, text="abcdefg"))  # 13 characters: 3 and 4 go
    assert cache.chars == 9
    assert cache.get(3, 1, 1, horizon=2) is None and cache.get(4, 1, 1, horizon=2) is None
    assert cache.get(2, 1, 1, horizon=2) is not None and cache.get(9, 1, 1, horizon=2) is not None
    cache.put(10, _entry(base=1, through=2, text="x" * 11))  # larger than the whole cache
    assert cache.get(10, 1, 1, horizon=2) is None
    with pytest.raises(ValueError):
        StreamCache(max_messages=0)


# -- through the store ---------------------------------------------------------------------


async def _tick(store: Store, streaming: list[Message], rng: random.Random) -> None:
    for message in streaming:
        message.append_text(f"<{rng.randrange(1000)}>")
        await store.messages.update(message)
    await store.messages.flush_all()


async def test_reads_that_follow_a_stream_walk_only_the_new_append_rows(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("cache")
        streaming = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(5)]
        for _ in range(40):
            await _tick(store, streaming, rng)
        assert [m.text for m in await store.messages.list(session.id)] == [
            m.text for m in streaming
        ]
        assert len(store._database.stream_cache) == 5
        walked = _count_walked_rows(monkeypatch)
        for _ in range(3):
            await _tick(store, streaming, rng)
            listed = await store.messages.list(session.id)
            assert [m.text for m in listed] == [m.text for m in streaming]
        assert walked == [1, 1, 1], f"append rows read per list(): {walked}"
        store._database.stream_cache.clear()
        cold = await store.messages.list(session.id)
        assert walked[-1] == 42  # 43 ticks; the first wrote the row whole (its Text part is new)
        assert [(m.parts, m.revision, m.updated_at) for m in cold] == [
            (m.parts, m.revision, m.updated_at) for m in listed
        ]


def _count_walked_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many append rows each later ``load`` reads."""
    walked: list[int] = []
    original: Callable[..., Any] = appends.decode

    def counting(payload: str, first: int, after: dict[int, int] | None = None) -> Any:
        walked[-1] += 1
        return original(payload, first, after)

    original_load = appends.load

    def load(
        conn: Connection, by_seq: dict[int, Message], cache: StreamCache | None = None
    ) -> None:
        walked.append(0)
        original_load(conn, by_seq, cache)

    monkeypatch.setattr(appends, "decode", counting)
    monkeypatch.setattr(appends, "load", load)
    return walked


async def test_a_rewritten_row_and_a_new_stream_are_read_afresh(db_url: str) -> None:
    rng = random.Random(9)
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("cache")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        for _ in range(5):
            await _tick(store, [message], rng)
        assert (await store.messages.get(message.id)).text == message.text
        # A tool call is a terminal change: the row is written whole and the stream closes.
        message.add_tool_call(ToolCall(id="c1", name="search", input="{}", finished=True))
        await store.messages.update(message)
        for _ in range(5):
            await _tick(store, [message], rng)
        got = await store.messages.get(message.id)
        assert got.text == message.text and got.tool_calls == message.tool_calls
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        got = await store.messages.get(message.id)
        assert got.text == message.text and got.is_finished
        # Deleted, and a new message streams (on SQLite it may even reuse the row's seq).
        await store.messages.delete(message.id)
        again = await store.messages.create(session.id, role=Role.ASSISTANT, parts=[Text("")])
        for _ in range(3):
            await _tick(store, [again], rng)
        assert (await store.messages.get(again.id)).text == again.text


async def test_a_reader_with_an_older_snapshot_never_gets_newer_text(db_url: str) -> None:
    """A read that began before a tick must not take that tick's text from the cache, even
    after a newer read put it there."""
    rng = random.Random(3)
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("cache")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        for _ in range(4):
            await _tick(store, [message], rng)
        before = message.text
        async with _read_transaction(store) as run:
            row = await run(_row, message.id)  # the reader's snapshot starts here
            for _ in range(3):
                await _tick(store, [message], rng)
            newer = await store.messages.get(message.id)  # the cache now holds more
            assert newer.text == message.text != before
            old = await run(_load, row)
            assert old.text == before
            assert old.revision < newer.revision
        assert (await store.messages.get(message.id)).text == message.text


@contextlib.asynccontextmanager
async def _read_transaction(store: Store) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """One read-only transaction beside the store's, carrying the store's cache; yields a
    function that runs a job in it."""
    cache = store._database.stream_cache

    def tx_of(conn: Connection) -> Tx:
        return Tx(conn, read_only=True, stream_cache=cache)

    if store.url.startswith("sqlite"):
        engine = _sqlite_engine(store.url, read_only=True, busy_timeout=30.0)
        try:
            with engine.connect() as conn, conn.begin():

                async def run_sync(job: Callable[..., Any], *args: Any) -> Any:
                    return job(tx_of(conn), *args)

                yield run_sync
        finally:
            engine.dispose()
        return
    async_engine = create_engine(store.url)
    try:
        async with async_engine.connect() as aconn:
            await aconn.execution_options(isolation_level="REPEATABLE READ")
            async with aconn.begin():

                async def run_async(job: Callable[..., Any], *args: Any) -> Any:
                    return await aconn.run_sync(lambda conn: job(tx_of(conn), *args))

                yield run_async
    finally:
        await async_engine.dispose()


def _row(tx: Tx, message_id: str) -> Any:
    query = select(*MESSAGE_COLUMNS, messages.c.seq).where(messages.c.id == message_id)
    return tx.conn.execute(query).one()


def _load(tx: Tx, row: Any) -> Message:
    message = message_from_row(row[:-1])
    appends.load(tx.conn, {row[-1]: message}, tx.stream_cache)
    return message


async def test_random_reads_beside_a_stream_equal_the_written_state(db_url: str) -> None:
    """Ticks, whole writes, folds and deletes at random, every read checked."""
    rng = random.Random(17)
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("cache")
        live = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(4)]
        for step in range(120):
            roll = rng.random()
            if roll < 0.6:
                await _tick(store, rng.sample(live, rng.randint(1, len(live))), rng)
            elif roll < 0.7:
                target = rng.choice(live)
                target.add_tool_call(ToolCall(id=f"c{step}", name="t", finished=True))
                await store.messages.update(target)
            elif roll < 0.75:
                target = rng.choice(live)
                target.add_finish(FinishReason.END_TURN, message=str(datetime.now(UTC)))
                await store.messages.update(target)
                await store.messages.delete(target.id)
                live.remove(target)
                live.append(await store.messages.create(session.id, role=Role.ASSISTANT))
            listed = await store.messages.list(session.id)
            assert [(m.id, m.parts) for m in listed] == [(m.id, m.parts) for m in live], step
            one = rng.choice(live)
            assert (await store.messages.get(one.id)).parts == one.parts, step
