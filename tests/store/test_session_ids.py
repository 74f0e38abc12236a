"""Sessions under ids their callers chose: stored and announced as such, a taken id refused
with ``SessionExists`` (also when two creates race), a bad id refused before anything is
written; the blocking twin takes the same argument. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

import messagestore
from messagestore import InvalidMessage, SessionExists, Store, open_store
from messagestore.sync import open_store as open_sync_store
from pubsub import EventType


async def test_a_chosen_id_is_the_sessions_id(store: Store) -> None:
    sessions = store.sessions.subscribe()
    try:
        session = await store.sessions.create("chat", id="Xq2xP0aZ8b1cD3eF")
        assert session.id == "Xq2xP0aZ8b1cD3eF"
        assert (await store.sessions.get("Xq2xP0aZ8b1cD3eF")).title == "chat"
        async with asyncio.timeout(10):
            event = await sessions.receive()
        assert event.type is EventType.CREATED and event.payload.id == session.id
        # Messages hang off it like off any other session.
        message = await store.messages.create(session.id, role="user")
        assert (await store.messages.list(session.id))[0].id == message.id
    finally:
        sessions.close()


async def test_a_taken_id_raises_session_exists_and_changes_nothing(store: Store) -> None:
    first = await store.sessions.create("first", id="taken")
    with pytest.raises(SessionExists) as caught:
        await store.sessions.create("second", id="taken")
    assert caught.value.session_id == "taken"
    assert "taken" in str(caught.value)
    assert isinstance(caught.value, messagestore.MessageStoreError)
    stored = await store.sessions.get("taken")
    assert stored.title == "first" and stored.revision == first.revision
    assert [s.id for s in await store.sessions.list()] == ["taken"]


async def test_an_id_can_be_chosen_again_once_its_session_is_deleted(store: Store) -> None:
    await store.sessions.create("old", id="again")
    await store.sessions.delete("again")
    session = await store.sessions.create("new", id="again")
    assert (await store.sessions.get("again")).title == "new" == session.title


async def test_two_stores_racing_for_one_id_make_one_session(db_url: str) -> None:
    async with open_store(db_url) as one, open_store(db_url) as two:
        results = await asyncio.gather(
            *(s.sessions.create(f"racer {i}", id="raced") for i, s in enumerate((one, two) * 3)),
            return_exceptions=True,
        )
        made = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, SessionExists)]
        assert len(made) == 1 and len(refused) == 5, results
        assert [s.id for s in await one.sessions.list()] == ["raced"]


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        ("", InvalidMessage, "must not be empty"),
        ("x" * 256, InvalidMessage, "the limit is 255"),
        ("nul\x00", InvalidMessage, "NUL"),
        ("\ud800", InvalidMessage, "surrogate"),
        (42, InvalidMessage, "must be a str, not int"),
        (b"bytes", InvalidMessage, "must be a str, not bytes"),
    ],
)
async def test_a_bad_id_is_refused_before_anything_is_written(
    store: Store, bad: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        await store.sessions.create("t", id=bad)  # type: ignore[arg-type]
    assert await store.sessions.list() == []


async def test_the_longest_id_is_taken(store: Store) -> None:
    longest = "é" * 255
    session = await store.sessions.create("t", id=longest)
    assert (await store.sessions.get(longest)).id == session.id == longest


def test_the_blocking_twin_takes_a_chosen_id(db_url: str) -> None:
    with open_sync_store(db_url) as store:
        session = store.sessions.create("sync", id="blocking-id")
        assert session.id == "blocking-id"
        with pytest.raises(SessionExists):
            store.sessions.create("sync", id="blocking-id")
        with pytest.raises(InvalidMessage):
            store.sessions.create("sync", id="")
