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
  ``await stall.started()`` waits until the job is held (bound it: ``asyncio.timeout``);
  ``release()`` may be called from any thread. Closing the store releases every stall.
* A store with no faults armed pays one attribute check per job. ``plan.clear()`` disarms
  everything. Call ``faults(store)`` in the store's event loop.
"""

from __future__ import annotations

from ._database._faults import Failure, Fault, FaultPlan, JobKind, Stall
from ._store import Store

__all__ = ["Failure", "Fault", "FaultPlan", "JobKind", "Stall", "faults", "flusher_running"]


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
