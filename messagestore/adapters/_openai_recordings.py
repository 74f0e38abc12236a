"""The assistant message a streamed run is being recorded into, shared with the session.

``record_stream`` registers a ``Recording`` for ``(store, session id)`` before the run takes its
first step; a ``MessageStoreSession`` of the same run attaches its item batches to it, so the
turn is stored in one message, not two. Recordings are kept on the store
(``_adapter_state``) and touched only on its loop. The message is created lazily, so the user
message keeps its place before it; every mutation is followed at once by ``update()``, which
copies before it awaits, so concurrent writers need no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .. import Message, Role, Store
from ._adapter_state import adapter_state
from ._openai_items import encode_item, item_role
from ._store_sessions import create_message

__all__ = ["NAMESPACE", "Recording", "active_recording"]

NAMESPACE = "openai-agents"
"""Title prefix of the sessions the OpenAI Agents adapter creates (see ``_store_sessions``),
and the ``Message.provider`` of the messages it writes."""


def active_recording(store: Store, key: str) -> Recording | None:
    """The recording in progress for ``key`` on ``store``, if any."""
    return adapter_state(store).recordings.get(key)


class Recording:
    """One ``record_stream`` call's message, registered from ``register()`` to
    ``unregister()``."""

    def __init__(self, store: Store, key: str) -> None:
        self.store = store
        self.key = key
        self.model = ""
        self.message: Message | None = None
        self._creating: asyncio.Task[Message] | None = None

    async def register(self) -> Recording:
        """Make this the recording of its session (refused while another one is)."""
        by_key = adapter_state(self.store).recordings
        if self.key in by_key:
            raise RuntimeError(
                f"a streamed run is already being recorded for session {self.key!r}; "
                "record one run of a session at a time"
            )
        by_key[self.key] = self
        return self

    def unregister(self) -> None:
        by_key = adapter_state(self.store).recordings
        if by_key.get(self.key) is self:
            del by_key[self.key]

    @property
    def started(self) -> bool:
        """True once the message exists or is being created."""
        return self._creating is not None

    def wants(self, items: Iterable[dict[str, Any]]) -> bool:
        """True if a batch belongs in this message: the run's output, not the user's input."""
        return self.started or any(item_role(item) is Role.ASSISTANT for item in items)

    async def ensure_message(self) -> Message:
        """The message, created on first use; one creation however many callers race."""
        if self.message is not None:
            return self.message
        if self._creating is None:
            self._creating = asyncio.ensure_future(self._create())
        # Shielded: a cancelled caller leaves the creation to the others and to ``settle``.
        return await asyncio.shield(self._creating)

    async def _create(self) -> Message:
        message = await create_message(
            self.store, NAMESPACE, self.key, role=Role.ASSISTANT, model=self.model
        )
        self.message = message
        return message

    async def settle(self) -> None:
        """Wait for a creation still in flight; its failure was raised to whoever awaited it."""
        task = self._creating
        if task is None:
            return
        if not task.done():
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: every awaiting caller has already seen it

    async def attach(self, items: list[dict[str, Any]]) -> None:
        """Store ``items`` exactly in the message; returns once that is written."""
        message = await self.ensure_message()
        for item in items:
            message.parts.append(encode_item(item))
        await self.store.messages.update(message)
        await self.store.messages.flush(message.id)
