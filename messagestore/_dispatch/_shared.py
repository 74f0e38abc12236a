"""The state one dispatcher's parts share, and how effects of the scheduler are carried out.

``Shared.apply`` turns the scheduler's effects into work: a ``Start`` becomes a turn task
(``_runner.drive``), a ``Cancel`` cancels the task running ``run_turn``, a ``Release`` is
queued for the poller, which releases every queued claim in one transaction per poll (a claim
usually goes with its session's last turn's end; these are the rest). ``reschedule`` asks the
scheduler what is due now and arms ONE timer (``loop.call_at``) for the next window to close;
every state change calls it. All of this is synchronous: tasks are created and cancelled,
never awaited here. Every task is kept in ``tasks`` and awaited by ``Dispatcher.close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._model import new_id
from .._receivers import send
from .._store import Store
from ._config import QueueConfig, ReplyConfig, TurnOutcome
from ._machine import Cancel, Effect, Scheduler, Start
from ._receipts import SESSION_DELETED, Ledger, Receipt
from ._stats import Counters, inputs_dropped
from ._turn import Turn

__all__ = ["Run", "Shared", "log"]

log = logging.getLogger("messagestore")


def _log_if_raised(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("dispatcher: task %s raised", task.get_name(), exc_info=error)


@dataclass(eq=False, slots=True)
class Run:
    """One turn of this process, from its ``Start`` to its recorded end."""

    key: int
    session_id: str
    turn_id: str
    take_all: bool
    generation: int
    token: int = 0
    turn: Turn | None = None
    task: asyncio.Task[None] | None = None  # the task running ``run_turn``
    cancel_requested: bool = False
    cancel_delivered: bool = False  # ``task.cancel()`` reached the task before it ended
    forgotten: bool = False  # a ``reset`` ended it: its completion is ignored
    counted: bool = False  # its end is in the counters already (``reset`` counted it)
    input_ids: list[str] = field(default_factory=list)


class Shared:
    """What the dispatcher, its turn runner and its poller share."""

    def __init__(
        self,
        store: Store,
        config: QueueConfig,
        machine: Scheduler,
        *,
        owner: str,
        claim_ttl: float,
        poll_interval: float,
        run_turn: Callable[[Turn], Any],
        sender: object,
    ) -> None:
        self.store = store
        self.config = config
        self.machine = machine
        self.owner = owner
        self.claim_ttl = claim_ttl
        self.poll_interval = poll_interval
        self.run_turn = run_turn
        self.sender = sender
        self.reply: ReplyConfig | None = None  # create each turn's reply at its start
        self.ledger = Ledger()
        self.counters = Counters()
        self.runs: dict[int, Run] = {}  # by scheduler key, from Start to recorded end
        self.by_turn: dict[str, Run] = {}  # the same runs by turn id
        self.recently_ended: set[str] = set()  # turn ids forgotten since the poll began
        self.tasks: set[asyncio.Task[Any]] = set()
        self.accepting = False  # starts may run (the dispatcher is started and not closing)
        self.drive: Callable[[Run], Coroutine[Any, Any, None]] | None = None
        self.releases: dict[str, int] = {}  # claims to release at the next poll: session -> token
        self.wake_poll: Callable[[], None] = lambda: None  # poll now (set by the dispatcher)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` in a task this dispatcher owns (awaited on close); one that raises
        is a bug, logged at once rather than found at close."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_log_if_raised)
        return task

    def apply(self, effects: list[Effect] | list[Start] | list[Cancel]) -> None:
        """Carry out the scheduler's effects (synchronously: tasks are only created)."""
        for effect in effects:
            if isinstance(effect, Start):
                self._start(effect)
            elif isinstance(effect, Cancel):
                run = self.runs.get(effect.key)
                if run is not None:
                    self.cancel(run)
            else:
                self.releases[effect.session_id] = effect.token

    def _start(self, start: Start) -> None:
        run = Run(start.key, start.session_id, new_id(), start.take_all, self.machine.generation)
        self.runs[run.key] = run
        self.by_turn[run.turn_id] = run
        assert self.drive is not None
        self.spawn(self.drive(run), f"messagestore-turn-{run.session_id}")

    def cancel(self, run: Run) -> None:
        """Ask turn ``run`` to stop: cancel the task running ``run_turn`` (or, if it has not
        been created yet, have it cancelled as soon as it is)."""
        run.cancel_requested = True
        if run.turn is not None:
            run.turn.cancel_requested = True
        if run.task is not None and not run.task.done() and run.task.cancel():
            run.cancel_delivered = True

    def forget(self, run: Run) -> None:
        """The run's end is recorded (or it never started)."""
        self.runs.pop(run.key, None)
        self.by_turn.pop(run.turn_id, None)
        self.recently_ended.add(run.turn_id)

    # -- receipts ----------------------------------------------------------------------------

    def resolve_states(self, states: Mapping[str, str]) -> None:
        """Resolve the receipts of inputs whose recorded state is final (or gone)."""
        self._count_deleted(self.ledger.resolve_states(states))

    def resolve_deleted(self, input_ids: Iterable[str]) -> None:
        """The inputs were deleted with their session: ``DROPPED`` (``SESSION_DELETED``)."""
        resolved = self.ledger.resolve(input_ids, TurnOutcome.DROPPED, SESSION_DELETED)
        self._count_deleted(resolved)

    def _count_deleted(self, resolved: list[Receipt]) -> None:
        by_session: defaultdict[str, list[str]] = defaultdict(list)
        for receipt in resolved:
            if receipt.reason == SESSION_DELETED:
                by_session[receipt.session_id].append(receipt.id)
        for session_id, input_ids in by_session.items():
            self.counters.dropped += len(input_ids)
            send(
                inputs_dropped,
                self.sender,
                session_id=session_id,
                input_ids=input_ids,
                outcome=TurnOutcome.DROPPED,
                reason=SESSION_DELETED,
            )

    def session_deleted(self, session_id: str) -> None:
        """The session was found deleted: cancel this process's turns there and stop driving
        it; a poll resolves the receipts of its pending input, and its turns' inputs resolve
        once their end is recorded."""
        self.apply(self.machine.gone(session_id))
        self.wake_poll()

    def reschedule(self) -> None:
        """Start what is due now; arm the timer for the next window to close."""
        if not self.accepting:
            return
        now = self.now()
        starts, wake = self.machine.due(now)
        self.apply(starts)
        if wake == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = wake
        if wake is not None:
            self._timer = asyncio.get_running_loop().call_at(wake, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.reschedule()

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None
