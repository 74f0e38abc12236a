"""``SyncStore.transaction``: the blocking face of ``Store.transaction``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from messagestore import Role, Text, Tx
from messagestore.sync import SyncStore, open_store
from pubsub import EventType

WAIT = 10.0


@pytest.fixture
def store(db_url: str) -> Iterator[SyncStore]:
    with open_store(db_url) as opened:
        yield opened


def test_a_blocking_transaction_commits_and_announces_its_message(store: SyncStore) -> None:
    session = store.sessions.create("sync tx")
    with store.messages.subscribe(session_id=session.id) as sub:

        def job(tx: Tx) -> str:
            made = store.messages.create_in(tx, session.id, role=Role.USER, parts=[Text("hi")])
            return made.id

        message_id = store.transaction(job)
        event = sub.get(timeout=WAIT)
        assert (event.type, event.payload.id) == (EventType.CREATED, message_id)
    assert store.messages.get(message_id).text == "hi"
    assert store.transaction(lambda tx: tx.read_only, write=False) is True

    def fails(tx: Tx) -> None:
        store.messages.create_in(tx, session.id, role=Role.USER)
        raise KeyError("rolled back")

    with pytest.raises(KeyError):
        store.transaction(fails)
    assert [m.id for m in store.messages.list(session.id)] == [message_id]
