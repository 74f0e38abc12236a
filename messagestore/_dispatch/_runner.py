"""One turn, from its start transaction to its recorded end.

``drive(run)`` is the body of the turn's supervising task: the start transaction consumes the
session's pending input and stores the user message (and, with ``ReplyConfig``, the reply), or
finds the session busy, empty or gone; ``run_turn(turn)`` runs in a task of its own, the one
that stop, cancel, interrupts, reset and close cancel; the finish transaction gives replies
left unfinished their ``Finish`` and records every input's outcome; receipts resolve. The
supervising task is never cancelled and its transactions are shielded, so a started turn's
end is always recorded. The story: docs/ARCHITECTURE.md, "The life of one input through the
dispatcher".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable

from .._database._tx import Tx
from .._errors import NotFoundError, StoreClosed
from .._model import FinishReason, Message
from .._receivers import send
from ._config import QueueMode, TurnOutcome
from ._persist import run_transaction
from ._persist_turns import (
    Busy,
    Empty,
    Finished,
    Gone,
    InputRow,
    Started,
    finish_turn,
    start_turn,
    steer_turn,
)
from ._shared import Run, Shared, log
from ._stats import turn_failed, turn_started
from ._turn import Steering, Turn, TurnInput

__all__ = ["TurnRunner"]

_FINISH_ATTEMPTS = 3
_REPLY_FINISH = {
    TurnOutcome.COMPLETED: FinishReason.END_TURN,
    TurnOutcome.CANCELLED: FinishReason.CANCELED,
    TurnOutcome.FAILED: FinishReason.ERROR,
}


def _finals(turn: Turn, outcome: TurnOutcome) -> list[Message]:
    """The final state of each reply ``run_turn`` left unfinished: its ``Finish`` added."""
    finals = []
    for reply in turn.replies:
        if not reply.is_finished:
            final = reply.clone()
            final.add_finish(_REPLY_FINISH[outcome], message=f"turn {outcome.value}")
            finals.append(final)
    return finals


def _inputs(rows: tuple[InputRow, ...]) -> tuple[TurnInput, ...]:
    return tuple(TurnInput(r.id, r.text, r.metadata, r.key, r.submitted_at) for r in rows)


class TurnRunner:
    """Drives the turns of one dispatcher (see the module docstring)."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared

    async def drive(self, run: Run) -> None:
        shared = self._shared
        if not shared.accepting:  # closing: leave the input pending for the next start
            self._not_started(run, "empty")
            return
        start = functools.partial(
            start_turn,
            messages=shared.store.messages,
            session_id=run.session_id,
            owner=shared.owner,
            ttl=shared.claim_ttl,
            take_all=run.take_all,
            turn_id=run.turn_id,
            reply=shared.reply,
        )
        try:
            result = await run_transaction(shared.store, start)
        except Exception as exc:
            shared.counters.database_errors += 1
            log.warning("dispatcher: starting a turn of session %s failed: %r", run.session_id, exc)
            self._not_started(run, "error")
            return
        if isinstance(result, Started):
            await self._run(run, result)
            return
        if isinstance(result, Empty | Busy):
            self._stale(result.stale)
        if isinstance(result, Busy):
            shared.counters.start_conflicts += 1
            retry = shared.now() + max(result.retry_in, shared.poll_interval)
            self._not_started(run, "busy", retry)
        else:
            assert isinstance(result, Empty | Gone)
            self._not_started(run, "empty" if isinstance(result, Empty) else "gone")
            if isinstance(result, Gone):
                shared.wake_poll()  # the poll resolves the receipts of its deleted input

    def _stale(self, input_ids: tuple[str, ...]) -> None:
        """Inputs a start or steer found below the stale cutoff (and ended ``STALE``)."""
        if input_ids:
            self._shared.counters.stale += len(input_ids)
            self._shared.ledger.resolve(input_ids, TurnOutcome.STALE)

    def _not_started(self, run: Run, reason: str, retry_at: float | None = None) -> None:
        shared = self._shared
        shared.forget(run)
        effects = shared.machine.start_failed(
            run.key, shared.now(), reason=reason, retry_at=retry_at
        )
        shared.apply(effects)
        shared.reschedule()

    async def _run(self, run: Run, started: Started) -> None:
        shared = self._shared
        counters = shared.counters
        run.token = started.token
        self._stale(started.stale)
        inputs = _inputs(started.inputs)
        run.input_ids = [i.id for i in inputs]
        counters.turns_started += 1
        counters.inputs_run += len(inputs)
        counters.inputs_coalesced += len(inputs) - 1
        if started.interrupted:
            counters.turns_repaired += len(started.interrupted)
            shared.store._request_recovery()  # their replies: see ``Poller._repair``
        turn = Turn(
            turn_id=run.turn_id,
            session_id=run.session_id,
            inputs=inputs,
            text=started.user_message.text,
            note=started.note,
            user_message=started.user_message,
            delivery=started.delivery,
            started_at=started.started_at,
            generation=run.generation,
            store=shared.store,
            steer=functools.partial(self._steer, run),
            reply=started.reply,
        )
        run.turn = turn
        cancel_now = shared.machine.started(
            run.key, remaining=started.remaining, token=started.token
        )
        shared.reschedule()
        send(
            turn_started,
            shared.sender,
            session_id=run.session_id,
            turn_id=run.turn_id,
            inputs=len(inputs),
            latency=[(started.started_at - i.submitted_at).total_seconds() for i in inputs],
        )
        task = asyncio.get_running_loop().create_task(
            self._call(turn), name=f"messagestore-run-turn-{run.session_id}"
        )
        run.task = task
        if cancel_now or run.cancel_requested:
            shared.cancel(run)
        await asyncio.wait([task])
        outcome = self._outcome(run, task)
        await self._end(run, turn, outcome)

    async def _call(self, turn: Turn) -> None:
        result = self._shared.run_turn(turn)
        if not inspect.isawaitable(result):
            raise TypeError(
                f"run_turn returned {type(result).__name__}, not an awaitable: "
                "it must be an async function (async def run_turn(turn): ...)"
            )
        await result

    def _outcome(self, run: Run, task: asyncio.Task[None]) -> TurnOutcome:
        if run.cancel_delivered or task.cancelled():
            return TurnOutcome.CANCELLED
        error = task.exception()
        if error is None:
            return TurnOutcome.COMPLETED
        shared = self._shared
        log.error(
            "dispatcher: run_turn of session %s (turn %s) raised",
            run.session_id,
            run.turn_id,
            exc_info=error,
        )
        send(
            turn_failed, shared.sender, session_id=run.session_id, turn_id=run.turn_id, error=error
        )
        return TurnOutcome.FAILED

    async def _end(self, run: Run, turn: Turn, outcome: TurnOutcome) -> None:
        """Give every reply ``run_turn`` left unfinished its ``Finish`` and record the turn's
        end: in ONE transaction (``MessageService.update_with``) when there are such
        replies. If that transaction fails, nothing of it committed, and each part is done
        again on its own, as when there is no reply to finish: the replies' ``update()``,
        then the end with its retries."""
        shared = self._shared
        release = not run.forgotten and shared.machine.ending(run.key)
        end = functools.partial(
            finish_turn,
            session_id=run.session_id,
            owner=shared.owner,
            turn_id=run.turn_id,
            outcome=outcome.value,
            release=release,
        )
        finished: Finished | None = None
        finals = _finals(turn, outcome)
        if finals:
            finished = await self._finish_with_end(run, finals, end)
        if finished is None:
            if finals:
                await self._finish_replies(turn, outcome)
            finished = await self._record_end(run, end)
        self._ended(run, outcome, finished)

    async def _finish_with_end(
        self, run: Run, finals: list[Message], end: Callable[[Tx], Finished]
    ) -> Finished | None:
        """The replies' final states and the turn's end in one transaction; what the end
        recorded, or None if the transaction did not commit."""
        committed: list[Finished] = []

        def job(tx: Tx) -> Finished:
            finished = end(tx)
            tx.after_commit(lambda: committed.append(finished))
            return finished

        try:
            await self._shared.store.messages.update_with(finals, job)
        except NotFoundError:
            log.debug("dispatcher: a reply of turn %s was deleted before it ended", run.turn_id)
        except Exception as exc:
            if not committed:
                self._shared.counters.database_errors += 1
            log.warning(
                "dispatcher: finishing the replies of turn %s with its end failed: %r",
                run.turn_id,
                exc,
            )
        return committed[0] if committed else None

    async def _finish_replies(self, turn: Turn, outcome: TurnOutcome) -> None:
        """Give every reply ``run_turn`` left unfinished its ``Finish``, one ``update()``
        each (after ``_finish_with_end`` failed)."""
        for reply in turn.replies:
            if reply.is_finished:
                continue
            final = reply.clone()
            final.add_finish(_REPLY_FINISH[outcome], message=f"turn {outcome.value}")
            try:
                await self._shared.store.messages.update(final)
            except NotFoundError:
                log.debug("dispatcher: reply %s was deleted before the turn ended", reply.id)
            except Exception as exc:
                log.warning("dispatcher: could not finish reply %s: %r", reply.id, exc)

    async def _record_end(self, run: Run, end: Callable[[Tx], Finished]) -> Finished | None:
        """Record the turn's end in a transaction of its own, retried; None if it could not
        be recorded."""
        shared = self._shared
        finished: Finished | None = None
        for attempt in range(_FINISH_ATTEMPTS):
            try:
                finished = await run_transaction(shared.store, end)
                break
            except StoreClosed:
                break  # nothing more to record here: waiting receipts are told (StoreClosed)
            except Exception as exc:
                shared.counters.database_errors += 1
                log.warning(
                    "dispatcher: recording the end of turn %s failed (attempt %d): %r",
                    run.turn_id,
                    attempt + 1,
                    exc,
                )
                if attempt + 1 < _FINISH_ATTEMPTS:
                    await asyncio.sleep(0.2 * 2**attempt)
        return finished

    def _ended(self, run: Run, outcome: TurnOutcome, finished: Finished | None) -> None:
        """What the end recorded (or not) reaches the receipts, counters and scheduler."""
        shared = self._shared
        machine = shared.machine
        # Without a recorded end the receipts wait: the poll repairs the turn (its inputs
        # end FAILED) and resolves them from the database, like any other process would.
        if finished is not None and finished.gone:
            shared.resolve_deleted(run.input_ids)
            shared.wake_poll()  # and the session's pending input, gone with it
        elif finished is not None and finished.recorded:
            shared.ledger.resolve(run.input_ids, outcome)
        elif finished is not None:
            shared.resolve_states(finished.outcomes)
        if not run.counted:
            run.counted = True
            counters = shared.counters
            if outcome is TurnOutcome.COMPLETED:
                counters.turns_completed += 1
            elif outcome is TurnOutcome.FAILED:
                counters.turns_failed += 1
            else:
                counters.turns_cancelled += 1
        shared.forget(run)
        effects = machine.ended(
            run.key,
            remaining=None if finished is None else finished.remaining,
            released_token=None if finished is None else finished.released,
        )
        shared.apply(effects)
        shared.reschedule()

    async def _steer(self, run: Run, turn: Turn) -> Steering | None:
        shared = self._shared
        if shared.config.mode is not QueueMode.STEER or run.cancel_requested or run.forgotten:
            return None
        steer = functools.partial(
            steer_turn,
            messages=shared.store.messages,
            session_id=run.session_id,
            owner=shared.owner,
            token=run.token,
            turn_id=run.turn_id,
        )
        result = await run_transaction(shared.store, steer)
        self._stale(result.stale)
        if result.lost or result.user_message is None:
            if not result.lost:
                shared.machine.steered(run.session_id, result.remaining)
            return None
        inputs = _inputs(result.inputs)
        run.input_ids.extend(i.id for i in inputs)
        shared.counters.inputs_steered += len(inputs)
        shared.machine.steered(run.session_id, result.remaining)
        return Steering(inputs, result.user_message.text, result.user_message)
