"""A pytest plugin for langchain-core's own chat history tests: ``InMemoryChatMessageHistory``
becomes ``MessageStoreChatMessageHistory`` on a fresh store.

Loaded with ``-p sdk_langchain_swap`` into a pytest run of langchain-core's test files (see
``test_adapter_sdk_suites.py``). Their tests construct ``InMemoryChatMessageHistory()`` or
``InMemoryChatMessageHistory(messages=[...])``; each construction here opens a fresh
in-memory store (on an event loop in a thread of its own, so every call crosses from the
test's thread or loop to the store's) and stores the given messages first. Tests that compare
two histories by value (``==`` of pydantic models), or read the class's docstring, are skipped
with the reason in ``IN_MEMORY_ONLY``: a database-backed history is an object with an
identity, not a value.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from typing import Any

import langchain_core.chat_history
import pytest
from langchain_core.messages import BaseMessage

from messagestore import Store, open_store
from messagestore.adapters.langchain import MessageStoreChatMessageHistory

WAIT = 60.0

IN_MEMORY_ONLY = {
    "test_chat_history_deprecated": "reads the class docstring (its deprecation notice)",
    "test_input_messages": "compares histories with ==",
    "test_input_messages_async": "compares histories with ==",
    "test_using_custom_config_specs": "compares histories with ==",
    "test_using_custom_config_specs_async": "compares histories with ==",
}

_ids = itertools.count()


class _Stores:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="messagestore-sdk-suite", daemon=True
        )
        self._thread.start()
        self._opened: list[Store] = []

    def open(self) -> Store:
        store: Store = asyncio.run_coroutine_threadsafe(_open(), self.loop).result(WAIT)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            asyncio.run_coroutine_threadsafe(store.close(), self.loop).result(WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()


async def _open() -> Store:
    return await open_store("sqlite+aiosqlite://")


_stores: _Stores | None = None


class SwappedInMemoryHistory(MessageStoreChatMessageHistory):
    """``InMemoryChatMessageHistory``'s constructor on a ``MessageStoreChatMessageHistory``."""

    def __init__(self, messages: Sequence[BaseMessage] = (), **_: Any) -> None:
        assert _stores is not None, "the plugin was not configured"
        super().__init__(f"history-{next(_ids)}", _stores.open(), timeout=WAIT)
        if messages:
            self._bridge.run_blocking(
                lambda: self._write_now(list(messages)), "messages=", "aadd_messages"
            )

    async def _write_now(self, messages: list[BaseMessage]) -> None:
        await self.aadd_messages(messages)


def pytest_configure(config: pytest.Config) -> None:
    global _stores
    _stores = _Stores()
    langchain_core.chat_history.InMemoryChatMessageHistory = SwappedInMemoryHistory  # type: ignore[misc,assignment]


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stores
    if _stores is not None:
        _stores.close()
        _stores = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = IN_MEMORY_ONLY.get(getattr(item, "originalname", item.name))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"InMemoryChatMessageHistory only: {reason}"))
