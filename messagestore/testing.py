"""Fault injection for tests of code built on messagestore: fail or stall a store's next jobs.

(And one inspection: ``flusher_running(store)``, whether the background task that writes
debounced changes still runs, for tests that check the write path survives failures.)

Every read and write of a store is one database job, run as one transaction (see the
README's update contract). A test arms faults on the store's next jobs instead of patching
private attributes::

    from messagestore.testing import faults

    plan = faults(store)                                   # the store's fault plan
    failure = plan.fail_next(kind="write", error=OSError("disk I/O error"))
    # the next write job runs, then raises OSError inside its transaction: rolled back

    failing = plan.fail_next(kind="write", error=OSError("disk full"), times=None)
    ...                                                    # every write fails meanwhile
    failing.clear()                                        # the disk is back
    failing.count                                          # how many jobs it failed

    stall = plan.stall_next(kind="read")                   # the next read job is held ...
    task = asyncio.create_task(store.messages.get(message_id))
    await stall.started()                                  # ... in its worker, transaction open
    stall.release()                                        # and goes on

* ``kind`` is ``"write"`` (every job that may change the database: creates, group commits,
  deletes, session saves, the lease heartbeat, the dispatcher's transactions) or ``"read"``.
  Jobs take faults in submission order; each armed fault is taken by the next job(s) of its
  kind (``times`` for a failure, ``None`` for every one until ``clear()``; one for a stall).
* A failure's error is raised after the job ran, before the commit, as a failing commit
  would: what the job wrote is rolled back, and the caller (or the write path's retry) sees
  the error.
* A stall holds its job in the database's worker with the transaction open: on SQLite a
  held write keeps the write lock, and an in-memory database's one worker runs nothing else.
  The job's deadline (the store's ``job_timeout``) ends it as it ends a real hang: the job is
  rolled back and its caller gets ``DatabaseTimeout``.
  ``await stall.started()`` waits until the job is held (bound it: ``asyncio.timeout``);
  ``release()`` may be called from any thread. Closing the store releases every stall.
* ``crash_next(kind=...)`` kills the database's worker that takes the next job of ``kind``
  (a SQLite thread, the PostgreSQL writer task), as a bug in it would: that job, the jobs
  queued behind it and every later one of its kind fail with ``BackgroundTaskFailed``.
* A store with no faults armed pays one attribute check per job. ``plan.clear()`` disarms
  everything. Call ``faults(store)`` in the store's event loop.

Background loops (the flusher, the feed's reader and listener, tombstone pruning, the lease
heartbeat, the recovery sweeper, a dispatcher's poll) catch and retry what goes wrong in the
database; what kills one is a bug. ``await break_loop(store, "flusher")`` makes one die now as
if ``error`` escaped it, to see what a store (or a ``Dispatcher``) does then: the death is
logged, and writes raise ``BackgroundTaskFailed`` naming the loop. ``loops(owner)`` names the
loops running, in the order they started (``close()`` stops them in reverse order).
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
