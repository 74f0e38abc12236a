"""Fault injection for tests of code built on messagestore: fail, stall or crash a store's
next database jobs, kill a background loop, and look at what a test needs to see.

``faults(store)`` is the store's fault plan: ``fail_next`` (the job runs, then raises inside
its transaction: rolled back), ``stall_next`` (held in its worker with the transaction open
until ``release()`` or the job's deadline: ``DatabaseTimeout``), ``crash_next`` (the worker
dies: ``BackgroundTaskFailed``).
``break_loop(owner, name)`` kills a supervised loop; ``loops(owner)`` names those running.
The remaining functions are small documented seams that tests use instead of private
attributes. Examples and rules: README, "Testing your code with messagestore.testing".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._database._faults import Crash, Failure, Fault, FaultPlan, JobKind, Stall
from ._database._revisions import read_counter
from ._dispatch._dispatcher import Dispatcher
from ._loops import check_loop
from ._recovery._sweep import RecoveryReport
from ._store import Store
from ._supervisor import Supervisor

__all__ = [
    "Crash",
    "Failure",
    "Fault",
    "FaultPlan",
    "JobKind",
    "Stall",
    "LeaseState",
    "SweeperState",
    "break_loop",
    "faults",
    "feed_counter",
    "feed_horizon",
    "flusher_running",
    "lease_state",
    "loops",
    "poll_now",
    "prune_tombstones",
    "renew_claims",
    "request_recovery",
    "set_must_deliver_timeout",
    "sweeper_state",
    "until_heartbeat",
    "write_transactions",
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


def set_must_deliver_timeout(store: Store, seconds: float) -> None:
    """Set how long, in seconds, a must-deliver announcement of ``store``'s messages (a
    terminal ``update()``, a create, a delete) waits for full subscriptions to make room
    (default 0.05). A test raises it to hold a terminal update behind a slow reader, or lowers
    it to make slow readers miss the deadline. ``ValueError`` unless positive. Callable from
    any thread (the blocking twin's included): it only sets the bound later waits read."""
    if not isinstance(store, Store):
        raise TypeError(
            f"set_must_deliver_timeout() takes an asyncio messagestore Store, not "
            f"{type(store).__name__}"
        )
    store.messages._broker.must_deliver_timeout = seconds


async def prune_tombstones(store: Store) -> int:
    """Run one pass of ``store``'s tombstone pruner now (the background pass it runs every
    hour): delete the tombstones older than its ``feed_retention`` and raise the compacted
    revision. Returns how many were deleted."""
    return await _store(store, "prune_tombstones")._retention.prune()


async def feed_counter(store: Store) -> tuple[int, int]:
    """Read the database's change-feed counter now: (the newest revision committed by any
    process, the compacted revision: the newest whose tombstones were pruned)."""
    return await _store(store, "feed_counter").transaction(read_counter, write=False)


def write_transactions(store: Store) -> int:
    """How many write jobs ``store``'s database committed since it opened: every job of the
    store's own (a group commit, a create, a lease renewal) and of ``Store.transaction`` (the
    dispatcher's) counts one, also where PostgreSQL's writer committed several queued jobs in
    one shared transaction. A test compares two readings to see how many some work cost."""
    return _store(store, "write_transactions")._database.counts.writes_committed


def feed_horizon(store: Store) -> int | None:
    """The revision up to which ``store``'s change feed has published every change (None
    while no feed subscription is open, or before the feed read the counter): with
    ``feed_counter``, tells a stuck feed from a stuck subscriber."""
    return _store(store, "feed_horizon")._feed.horizon


async def poll_now(dispatcher: Dispatcher) -> None:
    """Run one poll of ``dispatcher`` now, as its background poll does every
    ``poll_interval`` (pending input, cancel requests, dead processes' turns, receipts)."""
    check_loop(_dispatcher(dispatcher, "poll_now")._store.loop, "messagestore.testing")
    await dispatcher._poller.poll_once()


async def renew_claims(dispatcher: Dispatcher) -> None:
    """Renew ``dispatcher``'s claims now, as its poll does every third of ``claim_ttl``;
    turns whose claim was taken over meanwhile are cancelled."""
    check_loop(_dispatcher(dispatcher, "renew_claims")._store.loop, "messagestore.testing")
    await dispatcher._poller.renew()


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What a store's writer lease has done so far (``lease_state``)."""

    id: str
    """The writer id, stamped on every message the store writes."""
    ttl: float
    heartbeats: int
    """Heartbeats that renewed the lease."""
    failures: int
    """Heartbeats that failed (logged, retried within a second)."""
    lapses: int
    """Heartbeats that found the lease row gone (a sweep judged the store dead) and renewed it."""
    last_error: Exception | None
    running: bool
    """True while the heartbeat loop runs."""


def lease_state(store: Store) -> LeaseState | None:
    """The state of ``store``'s writer lease; None for a read-only store (it takes none)."""
    lease = _store(store, "lease_state")._lease
    if lease is None:
        return None
    task = lease.task
    return LeaseState(
        lease.id,
        lease.ttl,
        lease.heartbeats,
        lease.failures,
        lease.lapses,
        lease.last_error,
        task is not None and not task.done(),
    )


async def until_heartbeat(store: Store, condition: Callable[[LeaseState], bool]) -> LeaseState:
    """Wait until a heartbeat of ``store``'s lease (renewed or failed) leaves a state for which
    ``condition`` holds, and return that state; at once if it holds already. Bound the wait
    (``asyncio.timeout``): a lease whose heartbeat stopped never changes."""
    lease = _store(store, "until_heartbeat")._lease
    if lease is None:
        raise ValueError("a read-only store has no writer lease")
    while True:
        state = lease_state(store)
        assert state is not None
        if condition(state):
            return state
        await lease.beaten()


@dataclass(frozen=True, slots=True)
class SweeperState:
    """What a store's background recovery sweeper has done so far (``sweeper_state``)."""

    sweeps: int
    """Sweeps that ran to their commit."""
    failures: int
    """Sweeps that failed (logged, tried again at a later heartbeat)."""
    last_report: RecoveryReport | None
    running: bool
    """True while the sweeper's loop runs."""


def sweeper_state(store: Store) -> SweeperState:
    """The state of ``store``'s background recovery sweeper (it sweeps when a heartbeat sees
    another writer's lease end, or when asked: ``request_recovery``)."""
    sweeper = _store(store, "sweeper_state")._sweeper
    task = sweeper.task
    return SweeperState(
        sweeper.sweeps, sweeper.failures, sweeper.last_report, task is not None and not task.done()
    )


def request_recovery(store: Store) -> None:
    """Ask ``store``'s sweeper to look for ended writer leases now and sweep if it finds one,
    as a dispatcher does after repairing a dead process's turn (one read; no heartbeat
    needed)."""
    _store(store, "request_recovery")._request_recovery()


def _store(store: Store, call: str) -> Store:
    if not isinstance(store, Store):
        raise TypeError(f"{call}() takes an asyncio messagestore Store, not {type(store).__name__}")
    check_loop(store.loop, "messagestore.testing")
    return store


def _dispatcher(dispatcher: Dispatcher, call: str) -> Dispatcher:
    if not isinstance(dispatcher, Dispatcher):
        raise TypeError(f"{call}() takes a Dispatcher, not {type(dispatcher).__name__}")
    return dispatcher
