"""``MessageService.update_with``: a message's state and a job of another capability in ONE
transaction — both commit or neither does, a cancelled caller only stops waiting, and the
state and what the job recorded are announced after the commit. SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from messagestore import (
    FinishReason,
    Message,
    MessageNotFound,
    Role,
    Store,
    Text,
    Tx,
    WriteFailed,
    open_store,
)
from messagestore.testing import faults, write_transactions
from pubsub import EventType

WAIT = 10.0


async def _streaming(store: Store) -> tuple[Message, Message]:
    """A session's reply, created and streamed (buffered); and its final state to write."""
    session = await store.sessions.create("update_with")
    reply = await store.messages.create(session.id, role=Role.ASSISTANT, model="m")
    reply.append_text("hello")
    await store.messages.update(reply)
    final = reply.clone()
    final.add_finish(FinishReason.END_TURN)
    return reply, final


def _note(store: Store, session_id: str) -> Callable[[Tx], Message]:
    def job(tx: Tx) -> Message:
        return store.messages.create_in(tx, session_id, role=Role.USER, parts=[Text("note")])

    return job


async def test_the_state_and_the_job_commit_together_and_are_announced(db_url: str) -> None:
    async with open_store(db_url, debounce=5.0) as store:
        reply, final = await _streaming(store)
        async with store.messages.subscribe(session_id=reply.session_id) as sub:
            before = write_transactions(store)
            note = await store.messages.update_with([final], _note(store, reply.session_id))
            assert write_transactions(store) - before == 1
            async with asyncio.timeout(WAIT):
                updated = await sub.receive()
                created = await sub.receive()
        assert isinstance(note, Message)
        assert (updated.type, updated.payload.id) == (EventType.UPDATED, reply.id)
        assert updated.payload.is_finished and updated.payload.text == "hello"
        assert (created.type, created.payload.id) == (EventType.CREATED, note.id)
        assert created.payload.revision > updated.payload.revision  # the job ran after
        stored = await store.messages.list(reply.session_id)
        assert [m.id for m in stored] == [reply.id, note.id] and stored[0].is_finished


async def test_a_failing_job_commits_nothing_and_the_state_stays_buffered(db_url: str) -> None:
    async with open_store(db_url, debounce=5.0) as store:
        reply, final = await _streaming(store)

        def job(tx: Tx) -> None:
            _note(store, reply.session_id)(tx)
            raise LookupError("the job fails (a test)")

        with pytest.raises(WriteFailed) as raised:
            await store.messages.update_with([final], job)
        assert isinstance(raised.value.__cause__, LookupError)
        stored = await store.messages.list(reply.session_id)
        assert [m.id for m in stored] == [reply.id] and not stored[0].is_finished
        await store.messages.flush(reply.id)  # still buffered: written now
        assert (await store.messages.get(reply.id)).is_finished


async def test_a_cancelled_caller_only_stops_waiting(db_url: str) -> None:
    async with open_store(db_url, debounce=5.0) as store:
        reply, final = await _streaming(store)
        stall = faults(store).stall_next(kind="write")
        call = asyncio.create_task(
            store.messages.update_with([final], _note(store, reply.session_id))
        )
        async with asyncio.timeout(WAIT):
            await stall.started()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        stall.release()
        async with asyncio.timeout(WAIT):
            await store.messages.flush_all()  # waits for the write in flight: it committed
        stored = await store.messages.list(reply.session_id)
        assert stored[0].is_finished and stored[1].text == "note"  # both committed


async def test_a_deleted_message_is_refused_before_anything_runs(store: Store) -> None:
    reply, final = await _streaming(store)
    await store.messages.delete(reply.id)
    ran: list[bool] = []
    with pytest.raises(MessageNotFound):
        await store.messages.update_with([final], lambda tx: ran.append(True))
    assert not ran
