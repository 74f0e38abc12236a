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


def test_the_dispatch_module_holds_the_dispatchers_names() -> None:
    assert sorted(messagestore.dispatch.__all__) == sorted([*DISPATCH_NAMES, "QueueFull"])
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
