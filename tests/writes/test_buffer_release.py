"""Without debouncing nothing stays buffered: written messages are released at once.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

from messagestore import (
    FinishReason,
    Role,
)
from tests.support.races import (
    opened,
)


async def test_without_debounce_written_messages_are_released(db_url: str) -> None:
    """With ``debounce=0`` idle entries were released only by the flusher, which
    ``debounce=0`` never starts: the buffer grew by one entry per message ever updated."""
    async with opened(db_url, debounce=0) as store:
        session = await store.sessions.create("no debounce")
        messages = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(30)]
        for message in messages:
            for n in range(3):
                message.append_text(f"{n} ")
                await store.messages.update(message)  # written at once, never finished
        assert store.messages.stats().buffered_messages == 0
        assert store.messages.stats().pending_messages == 0
        message = messages[0]  # a released message can still be updated and finished
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        assert (await store.messages.get(message.id)).is_finished
        for message in messages:
            assert (await store.messages.get(message.id)).text == "0 1 2 "
        assert store.messages.stats().buffered_messages == 0
