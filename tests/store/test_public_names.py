"""The public surface: where each name lives, and the aliases kept for one release.

The dispatcher's names live in ``messagestore.dispatch``. Reaching them through
``messagestore`` still works, warned about (``DeprecationWarning`` naming the new module);
``from messagestore import *`` takes none of them and warns about nothing. The services'
``broker`` properties are not public either: they still work for one release, warned about.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import messagestore
import messagestore.dispatch

DISPATCH_NAMES = [
    "Dispatcher",
    "DispatcherStats",
    "DropPolicy",
    "QueueConfig",
    "QueueMode",
    "Receipt",
    "Steering",
    "Turn",
    "TurnInput",
    "TurnOutcome",
    "inputs_dropped",
    "turn_failed",
    "turn_started",
]

NEW_DISPATCH_NAMES = ["InputRecord", "ReplyConfig", "TurnRecord"]
"""Names that never lived at the root: only in ``messagestore.dispatch``."""


def test_every_root_name_resolves_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in messagestore.__all__:
            assert getattr(messagestore, name) is not None, name
    assert len(set(messagestore.__all__)) == len(messagestore.__all__)


def test_the_dispatch_module_holds_the_dispatchers_names() -> None:
    assert sorted(messagestore.dispatch.__all__) == sorted(
        [*DISPATCH_NAMES, *NEW_DISPATCH_NAMES, "QueueFull"]
    )
    for name in messagestore.dispatch.__all__:
        assert getattr(messagestore.dispatch, name) is not None
    # QueueFull is an error: it stays with the others at the root, the same class.
    assert messagestore.dispatch.QueueFull is messagestore.QueueFull
    assert "QueueFull" in messagestore.__all__


@pytest.mark.parametrize("name", DISPATCH_NAMES)
def test_the_root_alias_warns_and_gives_the_same_object(name: str) -> None:
    assert name not in messagestore.__all__
    moved = rf"messagestore\.{name} moved to messagestore\.dispatch"
    with pytest.warns(DeprecationWarning, match=moved) as caught:
        value = getattr(messagestore, name)
    assert value is getattr(messagestore.dispatch, name)
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_from_import_of_a_moved_name_warns() -> None:
    with pytest.warns(DeprecationWarning, match="from messagestore.dispatch import Dispatcher"):
        from messagestore import Dispatcher  # noqa: F401


def test_star_import_warns_about_nothing() -> None:
    # In a fresh interpreter, with every warning an error.
    code = "from messagestore import *\nassert 'Dispatcher' not in dir()\nassert open_store\n"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_other_missing_names_still_raise_attribute_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'Dispatchr'"):
            _ = messagestore.Dispatchr  # type: ignore[attr-defined]


# -- the services' brokers: not public; the old property warns for one release ---------------


async def test_the_services_broker_properties_warn(sqlite_url: str) -> None:
    async with messagestore.open_store(sqlite_url) as store:
        with pytest.warns(DeprecationWarning, match=r"MessageService\.broker") as caught:
            broker = store.messages.broker
        assert caught[0].filename == __file__
        assert broker.stats() == store.messages.stats().broker  # what replaces it
        with pytest.warns(DeprecationWarning, match=r"SessionService\.broker"):
            assert store.sessions.broker.subscriber_count == 0


def test_the_blocking_twins_broker_properties_warn_at_the_callers_line(sqlite_url: str) -> None:
    from messagestore.sync import open_store

    with open_store(sqlite_url) as store:
        with pytest.warns(DeprecationWarning, match=r"MessageService\.broker") as caught:
            broker = store.messages.broker
        assert caught[0].filename == __file__  # not the twin's module that delegates
        assert broker.subscriber_count == 0
        with pytest.warns(DeprecationWarning, match=r"SessionService\.broker") as caught:
            _ = store.sessions.broker
        assert caught[0].filename == __file__


async def test_the_store_has_no_public_database(sqlite_url: str) -> None:
    async with messagestore.open_store(sqlite_url) as store:
        assert not hasattr(store, "database")


# -- small public additions the faces are built on --------------------------------------------


def test_database_url_is_the_url_open_store_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    assert messagestore.database_url("sqlite:///chat.db") == "sqlite+aiosqlite:///chat.db"
    pg = "postgresql://u:secret@db/chat"
    assert messagestore.database_url(pg) == "postgresql+asyncpg://u:secret@db/chat"
    monkeypatch.setenv("MESSAGESTORE_URL", "sqlite:////tmp/env.db")
    assert messagestore.database_url() == "sqlite+aiosqlite:////tmp/env.db"
    monkeypatch.delenv("MESSAGESTORE_URL")
    default = f"sqlite+aiosqlite:///{messagestore.default_database_path()}"
    assert messagestore.database_url(None) == default
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mysql'"):
        messagestore.database_url("mysql://db/chat")
    with pytest.raises(ValueError, match="not a database URL"):
        messagestore.database_url("::not a url::")


async def test_the_wire_form_round_trips(sqlite_url: str) -> None:
    from messagestore.wire import MAX_REVISION, message_from_json, message_json

    assert MAX_REVISION == 2**63 - 1
    async with messagestore.open_store(sqlite_url, debounce=0) as store:
        session = await store.sessions.create("wire")
        message = await store.messages.create(session.id, role=messagestore.Role.ASSISTANT)
        message.append_text("hello")
        message.add_finish(messagestore.FinishReason.END_TURN)
        await store.messages.update(message)
        stored = await store.messages.get(message.id)
    document = message_json(stored)
    assert document["revision"] == stored.revision and document["finished"] is True
    assert message_from_json(document) == stored
    with pytest.raises(ValueError, match="lacks revision"):
        message_from_json({k: v for k, v in document.items() if k != "revision"})
