"""A pytest plugin for the OpenAI Agents SDK's own session tests: ``SQLiteSession`` becomes a
factory of ``MessageStoreSession`` on a fresh store.

Loaded with ``-p sdk_openai_swap`` into a pytest run of the SDK's test files (see
``test_adapter_sdk_suites.py``). The SDK's tests import ``SQLiteSession`` from ``agents`` (or
``agents.memory``) and construct it as ``SQLiteSession(session_id, db_path=":memory:", ...,
session_settings=None)``; this plugin replaces that name before they are imported. Each
``db_path`` gets a fresh store (``":memory:"`` a new in-memory one each time, a file path one
SQLite store shared by the sessions made on it, as they share the file); ``session.close()``
releases it. The stores run on an event loop in a thread of their own, so every call the
tests make reaches the store from another loop or thread: the adapter's bridge to the store's
loop is what is under test, besides the protocol itself.

Tests of ``SQLiteSession``'s own internals (its connections, file locks, tables, the SQLite
file under it) are skipped with the reason given in ``SQLITE_INTERNALS``. In the other files
(the runner's tests), only tests that construct a ``SQLiteSession`` are kept.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path
from typing import Any

import agents
import agents.memory
import pytest

from messagestore import Store, open_store
from messagestore.adapters.openai_agents import MessageStoreSession

WAIT = 60.0

SQLITE_INTERNALS = {
    "test_sqlite_session_close_closes_worker_thread_connections": "its per-thread connections",
    "test_sqlite_session_reaps_connections_from_exited_worker_threads": (
        "its per-thread connections"
    ),
    "test_sqlite_session_closes_retired_connections_before_the_next_allocation": (
        "its per-thread connections and sqlite3.connect"
    ),
    "test_sqlite_session_keeps_connections_of_live_worker_threads": "its per-thread connections",
    "test_sqlite_session_closed_rejects_empty_add_items": (
        "matches SQLiteSession's own error text (a closed store raises StoreClosed)"
    ),
    "test_sqlite_session_pop_item_skips_corrupt_most_recent": (
        "writes corrupt rows into its tables through its connection"
    ),
    "test_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows": (
        "writes corrupt rows into its tables through its connection"
    ),
    "test_sqlite_session_get_items_limit_skips_corrupt_newest_rows": (
        "writes corrupt rows into its tables through its connection"
    ),
    "test_sqlite_session_get_items_session_settings_limit_skips_corrupt_rows": (
        "writes corrupt rows into its tables through its connection"
    ),
    "test_sqlite_session_file_lock_is_shared_across_instances": "its process-wide file locks",
    "test_sqlite_session_failed_add_items_releases_write_lock": (
        "probes its tables in the SQLite file"
    ),
    "test_sqlite_session_failed_clear_session_rolls_back": (
        "drops its tables in the SQLite file and inspects its connections"
    ),
    "test_sqlite_session_failed_pop_item_releases_write_lock": (
        "drops its tables in the SQLite file and inspects its connections"
    ),
    "test_sqlite_session_rollback_failure_evicts_connection": (
        "replaces its connection (_get_connection)"
    ),
    "test_sqlite_session_close_retries_quarantined_connection": (
        "replaces its connection (_get_connection)"
    ),
    "test_sqlite_session_post_commit_cancellation_propagates_after_known_outcome": (
        "pauses its connection's commit (_get_connection)"
    ),
}


class _Stores:
    """Stores on one event loop in a thread of their own, one per database path, counted."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="messagestore-sdk-suite", daemon=True
        )
        self._thread.start()
        self._lock = threading.Lock()
        self._by_path: dict[str, tuple[Store, int]] = {}
        self._opened: list[Store] = []  # closed at the end if a test never closed its session

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT)

    def acquire(self, db_path: str | Path) -> tuple[Store, str | None]:
        path = str(db_path)
        if path == ":memory:":
            store = self._run(_open("sqlite+aiosqlite://"))
            with self._lock:
                self._opened.append(store)
            return store, None
        path = str(Path(path).expanduser().resolve())
        with self._lock:
            held = self._by_path.get(path)
            if held is None:
                store = self._run(_open(f"sqlite+aiosqlite:///{path}"))
                self._by_path[path] = (store, 1)
                self._opened.append(store)
            else:
                store = held[0]
                self._by_path[path] = (store, held[1] + 1)
            return store, path

    def release(self, store: Store, path: str | None) -> None:
        with self._lock:
            if path is not None:
                held, count = self._by_path[path]
                if count > 1:
                    self._by_path[path] = (held, count - 1)
                    return
                del self._by_path[path]
        self._run(store.close())

    def close(self) -> None:
        with self._lock:
            left = [store for store in self._opened if not store.closed]
            self._opened.clear()
            self._by_path.clear()
        for store in left:
            self._run(store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()


async def _open(url: str) -> Store:
    return await open_store(url)


_stores: _Stores | None = None


class SwappedSQLiteSession(MessageStoreSession):
    """``SQLiteSession``'s constructor on a ``MessageStoreSession``: a fresh store per
    ``db_path``, and ``close()`` gives this session's share of it back, as ``SQLiteSession``
    closes its connections."""

    def __init__(
        self,
        session_id: str,
        db_path: str | Path = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        assert _stores is not None, "the plugin was not configured"
        store, path = _stores.acquire(db_path)
        try:
            super().__init__(session_id, store, session_settings=session_settings)
        except BaseException:
            _stores.release(store, path)
            raise
        self._path = path
        self._released = False

    def close(self) -> None:
        if not self._released and _stores is not None:
            self._released = True
            _stores.release(self.store, self._path)


def pytest_configure(config: pytest.Config) -> None:
    global _stores
    _stores = _Stores()
    agents.SQLiteSession = SwappedSQLiteSession  # type: ignore[misc]
    agents.memory.SQLiteSession = SwappedSQLiteSession  # type: ignore[misc]


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stores
    if _stores is not None:
        _stores.close()
        _stores = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests of SQLite internals; outside the session test files, keep only the
    tests that construct a ``SQLiteSession`` (the rest do not touch a session)."""
    kept, dropped = [], []
    for item in items:
        name = getattr(item, "originalname", item.name)
        reason = SQLITE_INTERNALS.get(name)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"SQLiteSession internals: {reason}"))
        if Path(str(item.fspath)).name.startswith("test_session") or _uses_a_session(item):
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _uses_a_session(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    try:
        return function is not None and "SQLiteSession" in inspect.getsource(function)
    except (OSError, TypeError):
        return True
