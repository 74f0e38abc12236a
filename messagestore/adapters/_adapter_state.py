"""What the adapters remember per store, kept on the store itself.

* the store session that holds each SDK conversation, once resolved (``_store_sessions``);
* one ``asyncio.Lock`` per purpose and conversation: resolving a conversation's session,
  ``pop_item`` / ``clear_session`` of an OpenAI Agents session, writes of a LangChain
  history — so concurrent calls in this process never interleave where they must not;
* the streamed runs being recorded, per conversation (``_openai_recordings``).

It lives on the store (``Store.feature_state``): it goes away with the store, and no module
keeps a registry of stores. Every adapter call runs on the store's event loop (``_loop_bridge``),
so the locks belong to that loop and the state is touched from its thread only.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import Store

if TYPE_CHECKING:
    from ._openai_recordings import Recording

__all__ = ["AdapterState", "adapter_lock", "adapter_state"]


@dataclass(slots=True)
class AdapterState:
    """The adapters' state for one store (see the module docstring)."""

    ids: dict[tuple[str, str], str] = field(default_factory=dict)
    locks: weakref.WeakValueDictionary[tuple[str, ...], asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    recordings: dict[str, Recording] = field(default_factory=dict)

    def lock(self, key: tuple[str, ...]) -> asyncio.Lock:
        """The lock for ``key``; it lives while anyone holds or waits on it."""
        lock = self.locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self.locks[key] = lock
        return lock


def adapter_state(store: Store) -> AdapterState:
    """The adapters' state kept on ``store`` (call on the store's loop)."""
    return store.feature_state(AdapterState, AdapterState)


def adapter_lock(store: Store, *key: str) -> asyncio.Lock:
    """The lock of ``key`` (a purpose, then the conversation) on ``store``."""
    return adapter_state(store).lock(key)
