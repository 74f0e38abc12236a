"""An in-memory SQLite store (one connection, one worker) stays correct under concurrent
writes, reads and deletes.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio

import pytest

from messagestore import (
    FinishReason,
    Role,
)
from tests.support.races import (
    bounded,
    opened,
)


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_in_memory_sqlite_is_correct_under_concurrency(url: str) -> None:
    """An in-memory database shared one connection between readers and writers:
    concurrent ``create()`` and reads failed with "cannot start a transaction within a
    transaction", rows went missing and ``message_count`` disagreed with the rows."""
    async with opened(url, debounce=0.005) as store:
        sessions = [await store.sessions.create(f"memory {n}") for n in range(3)]

        async def agent(session_id: str, n: int) -> None:
            for i in range(8):
                message = await store.messages.create(session_id, role=Role.ASSISTANT)
                message.append_text(f"agent {n} message {i}")
                await store.messages.update(message)
                await store.messages.list(session_id)
                await store.sessions.get(session_id)
                message.add_finish(FinishReason.END_TURN)
                await store.messages.update(message)

        async with bounded("concurrent agents", 30):
            await asyncio.gather(*(agent(s.id, n) for s in sessions for n in range(3)))
        for session in sessions:
            rows = await store.messages.list(session.id)
            assert len(rows) == 24
            assert all(m.is_finished and m.text.startswith("agent ") for m in rows)
            assert (await store.sessions.get(session.id)).message_count == 24
