"""The poll: what a dispatcher learns from the database rather than from its own calls.

Every ``poll_interval`` (at once after ``start``, and on ``poke()``) one read finds pending
input this process may run, its running turns another process asked to cancel, running turns
of processes whose claim ended (repaired as interrupted; the store is asked for a recovery
sweep), and the final states of inputs another process ran. Every third of ``claim_ttl`` it
renews this process's claims; claims lost cancel their turns. A failed poll is logged and
retried. It is a loop of the dispatcher's supervisor. The story: docs/ARCHITECTURE.md, "The
life of one input through the dispatcher".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

from .._supervisor import Loop, Supervisor
from ._persist import run_read, run_transaction
from ._persist_control import Polled, poll, release_claims, renew_claims, repair_turns
from ._shared import Shared, log

__all__ = ["Poller"]

POLL_LIMIT = 1000  # sessions per poll; the oldest pending input first


class Poller:
    """The poll and claim-renewal loop of one dispatcher."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._wake = asyncio.Event()
        self._running: Loop | None = None
        self._finishing = False
        self._renewed_at = 0.0

    def start(self, supervisor: Supervisor) -> None:
        self._renewed_at = self._shared.now()
        self._running = supervisor.start("dispatch-poller", self._loop, on_stop=self._finish)

    def poke(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    def finish(self) -> None:
        """End after the poll in flight (the store closes under the dispatcher); the
        dispatcher's ``close()`` stops the loop for good."""
        if self._running is not None:
            self._running.request_stop()

    def _finish(self) -> None:
        self._finishing = True
        self._wake.set()

    async def _loop(self) -> None:
        shared = self._shared
        renew_every = shared.claim_ttl / 3
        next_renewal = shared.now() + renew_every
        while not self._finishing and not shared.store.closed:
            self._wake.clear()
            try:
                await self.poll_once()
            except Exception as exc:
                shared.counters.database_errors += 1
                log.warning(
                    "dispatcher: poll failed (next in %.1fs): %r", shared.poll_interval, exc
                )
            if shared.now() >= next_renewal:
                await self.renew()
                next_renewal = shared.now() + renew_every
            # ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` drops a
            # cancellation that arrives just as a poke wakes it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(shared.poll_interval):
                    await self._wake.wait()

    async def poll_once(self) -> None:
        """One poll (see the module docstring)."""
        shared = self._shared
        shared.recently_ended.clear()
        local = {i for run in shared.runs.values() for i in run.input_ids}
        asked = [i for i in shared.ledger.open_ids() if i not in local]
        started = [run.turn_id for run in shared.runs.values() if run.turn is not None]
        read = functools.partial(
            poll, owner=shared.owner, input_ids=asked, limit=POLL_LIMIT, turn_ids=started
        )
        found: Polled = await run_read(shared.store, read)
        shared.counters.polls += 1
        self._apply(found)
        for turn_id in found.vanished:  # deleted with its session: stop it
            run = shared.by_turn.get(turn_id)
            if run is not None:
                shared.session_deleted(run.session_id)
        # Running here by the database but not known here: its end could not be recorded
        # (a turn that ended while the poll read is not one of them).
        known = shared.by_turn.keys() | shared.recently_ended
        unknown = [turn_id for turn_id in found.mine if turn_id not in known]
        if found.orphans or unknown:
            await self._repair([*found.orphans, *unknown])
        shared.apply(shared.machine.idle_claims())
        await self.release()
        shared.reschedule()

    async def release(self) -> None:
        """Release the claims queued by the scheduler, in one transaction."""
        shared = self._shared
        if not shared.releases:
            return
        claims, shared.releases = shared.releases, {}
        work = functools.partial(release_claims, owner=shared.owner, claims=claims)
        try:
            gone = await run_transaction(shared.store, work)
        except Exception as exc:
            shared.counters.database_errors += 1
            log.warning("dispatcher: releasing %d claim(s) failed: %r", len(claims), exc)
            return
        for session_id, token in gone:
            shared.machine.released(session_id, token)

    def _apply(self, found: Polled) -> None:
        shared = self._shared
        machine = shared.machine
        now = shared.now()
        for session_id, count, first in found.pending:
            age = max(0.0, (found.now - first).total_seconds())
            machine.discover(session_id, count, now - age)
        for turn_id, flagged in found.mine.items():
            run = shared.by_turn.get(turn_id)
            if flagged and run is not None and not run.cancel_requested:
                shared.cancel(run)
                if machine.is_current(run.key):
                    machine.cancel_key(run.key)
        shared.resolve_states(found.outcomes)

    async def _repair(self, turn_ids: list[str]) -> None:
        shared = self._shared
        repair = functools.partial(repair_turns, owner=shared.owner, turn_ids=turn_ids)
        repaired, states = await run_transaction(shared.store, repair)
        if repaired:
            log.warning(
                "dispatcher: repaired %d turn(s) of stopped processes as interrupted "
                "(%d input(s) failed)",
                len(repaired),
                len(states),
            )
            shared.counters.turns_repaired += len(repaired)
            shared.resolve_states(states)
            # Their replies may still look streaming: the recovery sweep finishes them once
            # the dead process's writer lease has ended (now, or at a later heartbeat).
            shared.store._request_recovery()

    async def renew(self) -> None:
        """Renew this process's claims; cancel turns where a claim was lost."""
        shared = self._shared
        machine = shared.machine
        held = machine.tokens()
        if not held:
            self._renewed_at = shared.now()
            return
        renew = functools.partial(
            renew_claims, owner=shared.owner, claims=held, ttl=shared.claim_ttl
        )
        try:
            lost = await run_transaction(shared.store, renew)
        except Exception as exc:
            shared.counters.database_errors += 1
            log.warning("dispatcher: renewing claims failed: %r", exc)
            if shared.now() - self._renewed_at > shared.claim_ttl:
                # The claims may have expired and been taken: stop running turns under them.
                lost = list(held)
                log.warning("dispatcher: claims unrenewed for longer than the lease; cancelling")
            else:
                return
        else:
            self._renewed_at = shared.now()
        for session_id in lost:
            shared.counters.claims_lost += 1
            log.warning("dispatcher: lost the claim on session %s; cancelling turns", session_id)
            shared.apply(machine.claim_lost(session_id))
        shared.reschedule()
