"""``Dispatcher``: inbound user input becomes agent turns, coalesced, one turn at a time per
session, durable in the store's database.

``submit`` commits the input (``_persist``) and tells the scheduler (``_machine``); the runner
(``_runner``) starts each turn in one transaction, runs ``run_turn`` and records the end; the
poller (``_poller``) learns what the database knows and this process does not; receipts
(``_receipts``) resolve from what was recorded. A session's turns run in the one process holding
its claim. The poll is a supervised loop: if it dies, ``submit`` and ``route`` raise
``BackgroundTaskFailed``. The story: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from .._errors import QueueFull, StoreClosed
from .._loops import check_loop
from .._model import new_id
from .._receivers import send
from .._store import Store
from .._supervisor import Supervisor
from .._validation import check_json_object
from ._config import QueueConfig, ReplyConfig, TurnOutcome, check_seconds
from ._machine import Scheduler
from ._persist import (
    Submitted,
    drain,
    encode_payload,
    run_read,
    run_transaction,
    submit_input,
)
from ._persist_control import (
    Stopped,
    cancel_turns,
    input_states,
    release_all,
    stop_session,
)
from ._poller import Poller
from ._receipts import Receipt, outcome_of, reason_of
from ._records import (
    InputRecord,
    TurnRecord,
    active_input,
    find_input,
    read_input,
    read_turn,
)
from ._routing import delivery as read_delivery
from ._routing import route as route_key
from ._runner import TurnRunner
from ._shared import Shared, log
from ._stats import DispatcherStats, inputs_dropped
from ._turn import Turn
from ._validate import check_key, check_session_id, check_text

__all__ = ["DEFAULT_CLAIM_TTL", "Dispatcher"]

DEFAULT_CLAIM_TTL = 15.0

RunTurn = Callable[[Turn], Any]
Throttle = Callable[[str], int | None]


class Dispatcher:
    """Runs ``run_turn`` for the input submitted to each session (see the module docstring).

    ``config``: how input becomes turns (``QueueConfig``). ``poll_interval``: seconds between
    polls of the database. ``max_turns``: most turns running at once in this process, all
    sessions together. ``throttle(session_id)``: may return a lower concurrency for one
    session (at least 1), asked at every scheduling decision. ``claim_ttl``: seconds a
    session's claim outlives this process's last renewal (renewed every third of it); a
    crashed process's sessions wait that long before another process runs them.
    ``reply``: opt in to creating each turn's assistant reply in its start transaction
    (``ReplyConfig``); ``turn.reply()`` then returns it.

    Use ``async with dispatcher:`` (or ``await start()`` / ``await close()``). ``submit``
    works without starting: the input is committed and a running dispatcher on the same
    database runs it.
    """

    def __init__(
        self,
        store: Store,
        run_turn: RunTurn,
        config: QueueConfig | None = None,
        *,
        poll_interval: float = 0.4,
        max_turns: int | None = None,
        throttle: Throttle | None = None,
        claim_ttl: float = DEFAULT_CLAIM_TTL,
        reply: ReplyConfig | None = None,
    ) -> None:
        if not isinstance(store, Store):
            raise TypeError(f"store must be a messagestore Store, not {type(store).__name__}")
        if not callable(run_turn):
            raise TypeError(f"run_turn must be an async callable, not {type(run_turn).__name__}")
        if config is None:
            config = QueueConfig()
        if not isinstance(config, QueueConfig):
            raise TypeError(f"config must be a QueueConfig, not {type(config).__name__}")
        poll = check_seconds("poll_interval", poll_interval, positive=True)
        ttl = check_seconds("claim_ttl", claim_ttl, positive=True)
        if ttl <= poll:
            raise ValueError(f"claim_ttl ({ttl}) must be longer than poll_interval ({poll})")
        if max_turns is not None and (
            isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1
        ):
            raise ValueError(f"max_turns must be None or an int of at least 1, not {max_turns!r}")
        if throttle is not None and not callable(throttle):
            raise TypeError(f"throttle must be callable, not {type(throttle).__name__}")
        if reply is not None and not isinstance(reply, ReplyConfig):
            raise TypeError(f"reply must be None or a ReplyConfig, not {type(reply).__name__}")
        self._store = store
        self.config = config
        self.poll_interval = poll
        machine = Scheduler(
            config, max_turns=max_turns, throttle=throttle, on_throttle_error=_throttle_failed
        )
        self._shared = shared = Shared(
            store,
            config,
            machine,
            owner=new_id(),
            claim_ttl=ttl,
            poll_interval=poll,
            run_turn=run_turn,
            sender=self,
        )
        shared.reply = reply
        runner = TurnRunner(shared)
        shared.drive = runner.drive
        self._poller = Poller(shared)
        shared.wake_poll = self._poller.poke
        self._supervisor = Supervisor("dispatcher")
        self._state = "new"
        self._closed = asyncio.Event()
        self._unhook: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``close()``."""
        return self._state == "running"

    @property
    def owner(self) -> str:
        """This dispatcher's id in the claims it takes."""
        return self._shared.owner

    async def start(self) -> None:
        """Start running turns: pending input in the database is picked up at once."""
        check_loop(self._store.loop, "Dispatcher.start()")
        if self._state != "new":
            raise RuntimeError(f"a dispatcher starts once; this one is {self._state}")
        if self._store.closed:
            raise StoreClosed()
        self._state = "running"
        self._shared.accepting = True
        self._unhook = self._store._when_closing(self._store_closing)
        self._poller.start(self._supervisor)

    def _store_closing(self) -> None:
        """The store closes under this running dispatcher: no turn starts any more, running
        ones are cancelled, and waiting receipts wake (those without an outcome raise
        ``StoreClosed``). ``close()`` still has to be called; it then finds little to do."""
        shared = self._shared
        shared.accepting = False
        shared.stop_timer()
        shared.apply(shared.machine.close())
        shared.ledger.wake_all()
        self._poller.finish()

    async def close(self) -> None:
        """Cancel running turns (outcome ``CANCELLED``), keep pending input, release claims.

        Returns once every turn has unwound and its end is recorded. Idempotent.
        """
        check_loop(self._store.loop, "Dispatcher.close()")
        if self._state in ("closing", "closed"):
            await self._closed.wait()
            return
        started = self._state == "running"
        self._state = "closing"
        shared = self._shared
        shared.accepting = False
        shared.stop_timer()
        shared.apply(shared.machine.close())
        try:
            await self._supervisor.stop()  # the poll
            while shared.tasks:
                await asyncio.gather(*list(shared.tasks), return_exceptions=True)
            if started and not self._store.closed:
                try:
                    await run_transaction(
                        self._store, functools.partial(release_all, owner=shared.owner)
                    )
                except Exception as exc:
                    log.warning("dispatcher: releasing claims on close failed: %r", exc)
            await drain(self._store)
        finally:
            if self._unhook is not None:
                self._unhook()
            self._state = "closed"
            self._closed.set()
            shared.ledger.wake_all()  # waiting receipts now read the database

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- input -------------------------------------------------------------------------------

    async def submit(
        self,
        session_id: str,
        text: str,
        *,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Commit one input for the session; returns once it is durable.

        ``key``: an id of the inbound message (per session); submitting the same key again
        stores nothing and returns a receipt following the first input (``duplicate``).
        Raises ``SessionNotFound``, ``InvalidMessage`` (empty or oversized text, a bad key or
        metadata) or ``QueueFull`` (cap reached under ``DropPolicy.NEW``) with nothing stored.
        """
        check_loop(self._store.loop, "Dispatcher.submit()")
        self._supervisor.check()
        session_id = check_session_id(session_id)
        text = check_text(text)
        checked_key = check_key("key", key)
        payload = encode_payload(text, check_json_object("metadata", metadata))
        shared = self._shared
        input_id = new_id()
        store = functools.partial(
            submit_input,
            input_id=input_id,
            session_id=session_id,
            payload=payload,
            key=checked_key,
            config=self.config,
        )
        try:
            submitted = await run_transaction(self._store, store)
        except QueueFull as full:
            shared.counters.rejected += 1
            receipt = Receipt(input_id, session_id, None)
            receipt.resolve(TurnOutcome.REJECTED)
            full.receipt = receipt
            send(
                inputs_dropped,
                self,
                session_id=session_id,
                input_ids=[input_id],
                outcome=TurnOutcome.REJECTED,
                reason="cap",
            )
            raise
        if submitted.duplicate:
            return self._duplicate(session_id, submitted)
        shared.counters.inputs_submitted += 1
        receipt = Receipt(input_id, session_id, submitted.created_at, waiter=self._wait)
        shared.ledger.add(receipt)
        if submitted.dropped:
            self._dropped(session_id, submitted)
        if shared.accepting:
            now = shared.now()
            shared.apply(shared.machine.add_input(session_id, now, interrupt=submitted.interrupted))
            shared.reschedule()
        return receipt

    def _duplicate(self, session_id: str, submitted: Submitted) -> Receipt:
        shared = self._shared
        shared.counters.duplicates += 1
        known = shared.ledger.get(submitted.input_id)
        if known is not None:
            return known
        receipt = Receipt(
            submitted.input_id,
            session_id,
            submitted.created_at,
            duplicate=True,
            waiter=self._wait,
        )
        outcome = outcome_of(submitted.state)
        if outcome is not None:
            receipt.resolve(outcome)
        else:
            shared.ledger.add(receipt)
        return receipt

    def _dropped(self, session_id: str, submitted: Submitted) -> None:
        shared = self._shared
        dropped = submitted.dropped
        reason = "interrupt" if submitted.interrupted else "cap"
        shared.counters.dropped += len(dropped)
        shared.ledger.resolve(dropped, TurnOutcome.DROPPED, reason)
        send(
            inputs_dropped,
            self,
            session_id=session_id,
            input_ids=list(dropped),
            outcome=TurnOutcome.DROPPED,
            reason=reason,
        )

    async def _wait(self, receipt: Receipt) -> None:
        """``Receipt.outcome()``: the event while running; reads of the database otherwise
        (``close`` wakes the waiters, which then read). Raises ``StoreClosed`` once the store
        is closed (closing it wakes the waiters)."""
        check_loop(self._store.loop, "Receipt.outcome()")
        while not receipt.done():
            if self._store.closed:
                raise StoreClosed()
            if self._state == "running":
                await receipt.wait_resolved(None)
                continue
            if await receipt.wait_resolved(0):
                return
            states = await run_read(self._store, functools.partial(input_states, ids=[receipt.id]))
            self._shared.resolve_states(states)
            state = states.get(receipt.id, "")
            outcome = outcome_of(state)
            if outcome is not None:
                receipt.resolve(outcome, reason_of(state))
                return
            await receipt.wait_resolved(self.poll_interval)

    def poke(self, session_id: str | None = None) -> None:
        """Look for input now instead of at the next poll (all sessions, or one)."""
        check_loop(self._store.loop, "Dispatcher.poke()")
        shared = self._shared
        if not shared.accepting:
            return
        if session_id is None:
            self._poller.poke()
            return
        shared.machine.hint(check_session_id(session_id), shared.now())
        shared.reschedule()

    # -- stop and cancel ---------------------------------------------------------------------

    async def stop(self, session_id: str) -> bool:
        """Cancel the session's running turn and discard its pending input (``CANCELLED``).

        Returns False when there was nothing to cancel or discard. The turn may still be
        unwinding when this returns (it counts as running until it has).
        """
        check_loop(self._store.loop, "Dispatcher.stop()")
        return await self._stop(session_id, discard="cancelled", stale=False)

    async def cancel_all(self, session_id: str) -> bool:
        """Cancel the session's turns and make every input submitted so far ``STALE``: even
        one found later by a poll is skipped. False when there was nothing to cancel."""
        check_loop(self._store.loop, "Dispatcher.cancel_all()")
        return await self._stop(session_id, discard="stale", stale=True)

    async def cancel_one(self, session_id: str) -> bool:
        """Cancel the session's oldest running turn; pending input stays. False if none."""
        check_loop(self._store.loop, "Dispatcher.cancel_one()")
        session_id = check_session_id(session_id)
        shared = self._shared
        cancel = shared.machine.cancel_one(session_id)
        if cancel is not None:
            shared.apply([cancel])
            return True
        stopped = await run_transaction(
            self._store,
            functools.partial(
                stop_session, session_id=session_id, discard=None, oldest_only=True, stale=False
            ),
        )
        self._cancel_flagged(stopped)
        return stopped.anything

    async def _stop(self, session_id: str, *, discard: str, stale: bool) -> bool:
        session_id = check_session_id(session_id)
        shared = self._shared
        running = [k for k in shared.machine.running_keys(session_id) if k in shared.runs]
        had_running = any(not shared.runs[k].cancel_requested for k in running)
        _, effects = shared.machine.stop(session_id)
        shared.apply(effects)
        stopped = await run_transaction(
            self._store,
            functools.partial(
                stop_session, session_id=session_id, discard=discard, oldest_only=False, stale=stale
            ),
        )
        self._cancel_flagged(stopped)
        shared.ledger.resolve(stopped.ended, TurnOutcome.STALE if stale else TurnOutcome.CANCELLED)
        if stale:
            shared.counters.stale += len(stopped.ended)
        else:
            shared.counters.discarded += len(stopped.ended)
        shared.reschedule()
        return had_running or stopped.anything

    def _cancel_flagged(self, stopped: Stopped) -> None:
        shared = self._shared
        for turn_id in stopped.flagged:
            run = shared.by_turn.get(turn_id)
            if run is not None:
                shared.cancel(run)
                if shared.machine.is_current(run.key):
                    shared.machine.cancel_key(run.key)

    async def reset(self) -> None:
        """Start a new generation: every turn running now is cancelled and forgotten at once
        (its inputs end ``CANCELLED``; its completion is ignored), so new input may start
        while the old generation unwinds. Pending input stays."""
        check_loop(self._store.loop, "Dispatcher.reset()")
        shared = self._shared
        forgotten_keys, effects = shared.machine.reset()
        generation = shared.machine.generation
        for run in shared.runs.values():
            if run.generation < generation:
                run.forgotten = True
        shared.apply(effects)
        started = []
        for key in forgotten_keys:
            forgotten = shared.runs.get(key)
            if forgotten is not None:
                started.append(forgotten.turn_id)
                forgotten.counted = True
        shared.counters.turns_cancelled += len(started)
        if started:
            states = await run_transaction(
                self._store, functools.partial(cancel_turns, turn_ids=started)
            )
            shared.resolve_states(states)
        shared.reschedule()

    # -- routing -----------------------------------------------------------------------------

    async def route(
        self,
        routing_key: str,
        *,
        title: str | None = None,
        delivery: Mapping[str, Any] | None = None,
    ) -> str:
        """The session an external conversation maps to, created on first sight.

        ``delivery`` (a JSON object: channel, thread, webhook, ...) is stored with the route on
        every call; read the newest back with ``delivery(session_id)`` or ``Turn.delivery``.
        """
        check_loop(self._store.loop, "Dispatcher.route()")
        self._supervisor.check()
        if title is not None and not isinstance(title, str):
            raise TypeError(f"title must be a str or None, not {type(title).__name__}")
        return await route_key(self._store, routing_key, title=title, delivery=delivery)

    async def delivery(self, session_id: str) -> Mapping[str, Any] | None:
        """The newest delivery context routed to the session, or None."""
        check_loop(self._store.loop, "Dispatcher.delivery()")
        return await read_delivery(self._store, session_id)

    # -- what the database knows -------------------------------------------------------------

    async def find_input(self, session_id: str, key: str) -> InputRecord | None:
        """The session's input submitted with ``key=key``, or None.

        For a caller that must not submit twice what it already submitted (a client retrying
        a request), and that wants that input's turn (``InputRecord.turn_id``). Works on a
        dispatcher that is not running (input taken here and run elsewhere).
        """
        check_loop(self._store.loop, "Dispatcher.find_input()")
        session_id = check_session_id(session_id)
        checked = check_key("key", key, required=True)
        assert checked is not None
        return await run_read(
            self._store, functools.partial(find_input, session_id=session_id, key=checked)
        )

    async def get_input(self, input_id: str) -> InputRecord | None:
        """The input (``Receipt.id``) as stored: pending, running in turn ``turn_id``, or how
        it ended; None when there is no such input (or its session was deleted)."""
        check_loop(self._store.loop, "Dispatcher.get_input()")
        if not isinstance(input_id, str):
            raise TypeError(f"input_id must be a str, not {type(input_id).__name__}")
        return await run_read(self._store, functools.partial(read_input, input_id=input_id))

    async def active_input(self, session_id: str) -> InputRecord | None:
        """The input whose turn runs in the session now (its oldest), else the session's
        oldest pending input; None when nothing is pending or running there. Whichever process
        runs the turn."""
        check_loop(self._store.loop, "Dispatcher.active_input()")
        session_id = check_session_id(session_id)
        return await run_read(self._store, functools.partial(active_input, session_id=session_id))

    async def get_turn(self, turn_id: str) -> TurnRecord | None:
        """The turn (``InputRecord.turn_id``, ``Turn.id``) as stored — running or how it
        ended — with the messages it wrote so far (``TurnRecord.replies``); None when there
        is no such turn."""
        check_loop(self._store.loop, "Dispatcher.get_turn()")
        if not isinstance(turn_id, str):
            raise TypeError(f"turn_id must be a str, not {type(turn_id).__name__}")
        return await run_read(self._store, functools.partial(read_turn, turn_id=turn_id))

    # -- telemetry ---------------------------------------------------------------------------

    def stats(self) -> DispatcherStats:
        """A snapshot of this dispatcher's counters (see ``DispatcherStats``)."""
        machine = self._shared.machine
        return DispatcherStats.of(
            self._shared.counters, pending=machine.pending, running=machine.running
        )


def _throttle_failed(session_id: str, error: Exception) -> None:
    log.warning("dispatcher: throttle(%r) raised %r; serializing the session", session_id, error)
