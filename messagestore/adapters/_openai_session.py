"""``MessageStoreSession``: the OpenAI Agents SDK's ``Session`` protocol on messagestore.

``get_items`` (in order; ``limit``: the latest, still chronological), ``add_items`` (one batch
= one message, whole or not at all), ``pop_item`` and ``clear_session`` (the store session
stays), as the SDK's own sessions behave. Items are stored by ``_openai_items``; the store
session by ``_store_sessions``. Writes are durable before they return and run to their outcome
if the caller is cancelled; pops of one session are serialized in one process. Any loop or
thread may call it (``_loop_bridge``). While ``record_stream`` records a run of the session,
its output goes into the recorded message. In full: docs/MODULES.md.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from agents import SessionSettings, TResponseInputItem
from agents.memory.session_settings import coerce_session_settings

from .. import Message, Role, Store, StoreClosed
from ._adapter_state import adapter_lock
from ._loop_bridge import LoopBridge
from ._openai_items import (
    CorruptItem,
    batch_parts,
    decode_item,
    display_parts,
    finish_for,
    is_item_part,
    validate_items,
)
from ._openai_recordings import NAMESPACE, active_recording
from ._outcome import run_to_outcome
from ._store_sessions import check_key, create_message, find_session

__all__ = ["MessageStoreSession"]

logger = logging.getLogger("messagestore.adapters.openai_agents")


class MessageStoreSession:
    """An OpenAI Agents SDK ``Session`` whose items are messages of a messagestore session."""

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        store: Store,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        self.session_id = check_key(session_id, "MessageStoreSession")
        self.store = store
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self._bridge = LoopBridge("MessageStoreSession", store)

    def __repr__(self) -> str:
        return f"MessageStoreSession({self.session_id!r})"

    async def store_session_id(self) -> str | None:
        """The id of the messagestore session holding this history (None before any write)."""
        return await self._bridge.run(
            lambda: find_session(self.store, NAMESPACE, self.session_id), "store_session_id"
        )

    # -- the protocol ----------------------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The items in the order added; with ``limit``, the latest ``limit`` of them."""
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit is not None and limit <= 0:
            return []
        return await self._bridge.run(lambda: self._get(limit), "get_items")

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Store ``items`` as one batch: all of them, or (on an error) none."""
        checked = validate_items(items)
        if not checked:
            if self.store.closed:
                raise StoreClosed()
            return
        await run_to_outcome(self._bridge.run(lambda: self._add(checked), "add_items"))

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item; ``None`` if the session has none."""
        return await run_to_outcome(self._bridge.run(self._pop, "pop_item"))

    async def clear_session(self) -> None:
        """Delete every message of this history's store session."""
        await run_to_outcome(self._bridge.run(self._clear, "clear_session"))

    # -- implementation, on the store's loop ---------------------------------------------------

    async def _get(self, limit: int | None) -> list[TResponseInputItem]:
        session_id = await find_session(self.store, NAMESPACE, self.session_id)
        if session_id is None:
            return []
        newest_first: list[dict[str, Any]] = []
        for message in reversed(await self.store.messages.list(session_id)):
            for index in range(len(message.parts) - 1, -1, -1):
                item = _item_at(message, index)
                if item is None:
                    continue
                newest_first.append(item)
                if limit is not None and len(newest_first) >= limit:
                    return _chronological(newest_first)
        return _chronological(newest_first)

    async def _add(self, checked: list[dict[str, Any]]) -> None:
        recording = active_recording(self.store, self.session_id)
        if recording is not None and recording.wants(checked):
            await recording.attach(checked)
            return
        role, parts = batch_parts(checked)
        await create_message(self.store, NAMESPACE, self.session_id, role=role, parts=parts)

    async def _pop(self) -> TResponseInputItem | None:
        session_id = await find_session(self.store, NAMESPACE, self.session_id)
        if session_id is None:
            return None
        async with adapter_lock(self.store, "openai-agents-pop", self.session_id):
            recording = active_recording(self.store, self.session_id)
            live = recording.message if recording is not None else None
            for stored in reversed(await self.store.messages.list(session_id)):
                message = live if live is not None and live.id == stored.id else stored
                for index in range(len(message.parts) - 1, -1, -1):
                    item = _item_at(message, index)
                    if item is None:
                        continue
                    await self._remove_part(message, index, live=message is live)
                    return cast(TResponseInputItem, item)
        return None

    async def _remove_part(self, message: Message, index: int, *, live: bool) -> None:
        """Write ``message`` without its item part ``index`` (delete it if none is left)."""
        del message.parts[index]
        messages = self.store.messages
        if live:  # a run is still being recorded into it: its streamed parts stay
            await messages.update(message)
            await messages.flush(message.id)
            return
        stored = [p for p in message.parts if is_item_part(p)]
        if not stored:
            await messages.delete(message.id)
            return
        items = [
            item
            for i in range(len(message.parts))
            if (item := _item_at(message, i, quiet=True)) is not None
        ]
        parts = display_parts(items)
        parts.extend(stored)
        if message.finish is not None:
            parts.append(message.finish)
        elif message.role is Role.ASSISTANT:
            parts.append(finish_for(parts))
        message.parts = parts
        await messages.update(message)
        await messages.flush(message.id)

    async def _clear(self) -> None:
        session_id = await find_session(self.store, NAMESPACE, self.session_id)
        if session_id is None:
            return
        async with adapter_lock(self.store, "openai-agents-pop", self.session_id):
            await self.store.messages.delete_session_messages(session_id)


def _item_at(message: Message, index: int, *, quiet: bool = False) -> dict[str, Any] | None:
    """The item stored in part ``index``; None if it stores none (or a corrupt one)."""
    part = message.parts[index]
    if not is_item_part(part):
        return None
    try:
        return decode_item(part)
    except CorruptItem as exc:
        if not quiet:
            logger.warning(
                "skipping a corrupt item in message %s (part %d): %s", message.id, index, exc
            )
        return None


def _chronological(newest_first: list[dict[str, Any]]) -> list[TResponseInputItem]:
    newest_first.reverse()
    return cast(list[TResponseInputItem], newest_first)
