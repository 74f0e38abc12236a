"""Fault injection for tests of code built on messagestore: fail, stall or crash a store's
next database jobs, kill a background loop, and look at what a test needs to see.

``faults(store)`` is the store's fault plan: ``fail_next`` (the job runs, then raises inside
its transaction: rolled back), ``stall_next`` (held in its worker with the transaction open
until ``release()``), ``crash_next`` (the worker dies: ``BackgroundTaskFailed``).
``break_loop(owner, name)`` kills a supervised loop; ``loops(owner)`` names those running.
The remaining functions are small documented seams that tests use instead of private
attributes. Examples and rules: README, "Testing your code with messagestore.testing".
"""

from __future__ import annotations

from ._database._faults import Crash, Failure, Fault, FaultPlan, JobKind, Stall
from ._dispatch._dispatcher import Dispatcher
from ._loops import check_loop
from ._store import Store
from ._supervisor import Supervisor

__all__ = [
    "Crash",
    "Failure",
    "Fault",
    "FaultPlan",
    "JobKind",
    "Stall",
    "break_loop",
    "faults",
    "flusher_running",
    "loops",
]


def faults(store: Store) -> FaultPlan:
    """The fault plan of ``store``: ``fail_next(...)``, ``stall_next(...)``, ``clear()``."""
    if not isinstance(store, Store):
        raise TypeError(f"faults() takes an asyncio messagestore Store, not {type(store).__name__}")
    return store._database.faults()


def flusher_running(store: Store) -> bool:
    """True while ``store``'s flusher runs: the background task that writes debounced changes.

    A store opened with a ``debounce`` above 0 starts it, ``close()`` stops it; a failing
    write, a failing tick or a raising signal receiver must never end it.
    """
    if not isinstance(store, Store):
        raise TypeError(
            f"flusher_running() takes an asyncio messagestore Store, not {type(store).__name__}"
        )
    task = store.messages._writer.flusher_task
    return task is not None and not task.done()


def loops(owner: Store | Dispatcher) -> list[str]:
    """The names of the background loops ``owner`` runs now, in the order they started."""
    return [loop.name for loop in _supervisor(owner).loops if not loop.stopping]


async def break_loop(
    owner: Store | Dispatcher, name: str, error: BaseException | None = None
) -> None:
    """Make the running background loop ``name`` of ``owner`` die as if ``error`` (default:
    a ``RuntimeError``) escaped it; return once its death is logged and recorded.

    ``LookupError`` if no such loop runs (``loops(owner)`` names those that do).
    """
    if error is None:
        error = RuntimeError(f"loop {name!r} broken by a test")
    await _supervisor(owner).inject(name, error)


def _supervisor(owner: Store | Dispatcher) -> Supervisor:
    if isinstance(owner, Store):
        check_loop(owner.loop, "messagestore.testing")
        return owner._supervisor
    if isinstance(owner, Dispatcher):
        check_loop(owner._store.loop, "messagestore.testing")
        return owner._supervisor
    raise TypeError(f"expected a messagestore Store or Dispatcher, not {type(owner).__name__}")
