"""Which messagestore session holds an SDK's conversation, created once on the first write.

An id that is an existing store session's id is that session; any other id names the session
titled ``"<namespace>:<id>"``, created on the first write (reads never create one). In one
process concurrent first writes create one session (a lock per store and namespace, the result
cached on the store: ``_adapter_state``); across processes the oldest session with the title
wins, which leaves a small window for a split. Every function runs on the store's loop. In
full: docs/MODULES.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from .. import Message, Part, Role, SessionNotFound, Store
from ._adapter_state import adapter_lock, adapter_state

__all__ = [
    "check_key",
    "create_message",
    "ensure_session",
    "find_session",
    "forget_session",
    "title_for",
]


def check_key(session_id: object, owner: str) -> str:
    """``session_id`` if it is a usable id, else a clear error naming ``owner``."""
    if not isinstance(session_id, str):
        raise TypeError(f"{owner}: session_id must be a str, not {type(session_id).__name__}")
    if not session_id:
        raise ValueError(f"{owner}: session_id must not be empty")
    return session_id


def title_for(namespace: str, key: str) -> str:
    """The title of the session an adapter creates for ``key``."""
    return f"{namespace}:{key}"


async def find_session(store: Store, namespace: str, key: str) -> str | None:
    """The id of the session holding ``key``'s conversation, or None if it has none yet."""
    ids = adapter_state(store).ids
    cached = ids.get((namespace, key))
    if cached is not None:
        return cached
    found = await _lookup(store, namespace, key)
    if found is not None:
        ids[(namespace, key)] = found
    return found


async def ensure_session(store: Store, namespace: str, key: str) -> str:
    """The id of the session holding ``key``'s conversation, created if there is none."""
    ids = adapter_state(store).ids
    cache_key = (namespace, key)
    cached = ids.get(cache_key)
    if cached is not None:
        return cached
    async with adapter_lock(store, "session", namespace, key):
        cached = ids.get(cache_key)
        if cached is not None:
            return cached
        found = await _lookup(store, namespace, key)
        if found is None:
            found = await _create(store, title_for(namespace, key))
        ids[cache_key] = found
        return found


async def create_message(
    store: Store,
    namespace: str,
    key: str,
    *,
    role: Role,
    parts: Iterable[Part] = (),
    model: str = "",
) -> Message:
    """Create a message in ``key``'s session (created if missing); ``provider`` is the namespace.

    If the cached session was deleted meanwhile, it is looked up (or created) once more.
    """
    parts = list(parts)
    for attempt in (1, 2):
        session_id = await ensure_session(store, namespace, key)
        try:
            return await store.messages.create(
                session_id, role=role, parts=parts, model=model, provider=namespace
            )
        except SessionNotFound:
            forget_session(store, namespace, key)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def forget_session(store: Store, namespace: str, key: str) -> None:
    """Drop the cached id (its session was deleted); the next call looks it up again."""
    adapter_state(store).ids.pop((namespace, key), None)


async def _lookup(store: Store, namespace: str, key: str) -> str | None:
    try:
        return (await store.sessions.get(key)).id
    except SessionNotFound:
        pass
    return await _oldest_titled(store, title_for(namespace, key))


async def _oldest_titled(store: Store, title: str) -> str | None:
    matches = [s for s in await store.sessions.list() if s.title == title]
    if not matches:
        return None
    return min(matches, key=lambda s: (s.created_at, s.id)).id


async def _create(store: Store, title: str) -> str:
    """Create the session; adopt an older one that another process created meanwhile."""
    created = await store.sessions.create(title)
    oldest = await _oldest_titled(store, title)
    if oldest is None or oldest == created.id:
        return created.id
    # Another store created it first: ours is still empty; remove it and use theirs.
    with contextlib.suppress(SessionNotFound):
        await store.sessions.delete(created.id)
    return oldest
