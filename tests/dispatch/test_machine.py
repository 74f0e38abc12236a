"""The scheduling state machine, without a database or an event loop.

Time is a number the test advances; "the database" is a dict of pending counts per session
that the test's start and finish steps consume, as the real transactions would. The rules
are checked one by one, then by a hypothesis state machine over random sequences of submits,
clock ticks, start and finish results, stops, cancels, resets and lost claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from messagestore._dispatch._machine import Cancel, Release, Scheduler, Start
from messagestore.dispatch import QueueConfig, QueueMode

COLLECT = QueueConfig(debounce=0.05, max_wait=0.2)


def starts(machine: Scheduler, now: float) -> list[Start]:
    return machine.due(now)[0]


def test_inputs_in_one_window_become_one_turn() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    m.add_input("a", 0.02)
    assert starts(m, 0.05) == []
    assert m.due(0.05)[1] == pytest.approx(0.07)  # the window was extended by the second
    (start,) = starts(m, 0.07)
    assert start.session_id == "a" and start.take_all
    assert starts(m, 1.0) == []


def test_window_closes_at_most_max_wait_after_the_first_input() -> None:
    m = Scheduler(COLLECT)
    t = 0.0
    while not starts(m, t):
        m.add_input("a", t)
        t = round(t + 0.04, 3)
        assert t <= 0.2 + 1e-9, "a chatty user starved the session"
    assert t == pytest.approx(0.2)


def test_one_turn_at_a_time_then_the_rest_as_one_follow_up() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (first,) = starts(m, 0.05)
    assert m.started(first.key, remaining=0, token=1) is False
    m.add_input("a", 0.10)
    m.add_input("a", 0.12)
    assert starts(m, 1.0) == [], "a second turn started while the first runs"
    assert m.ending(first.key) is False  # input waits: keep the claim
    assert m.ended(first.key, remaining=2, released_token=None) == []
    (follow,) = starts(m, 1.0)
    assert follow.take_all and m.turns_of("a") == 1


def test_queue_mode_runs_one_turn_per_input_up_to_max_concurrent() -> None:
    m = Scheduler(QueueConfig(mode=QueueMode.QUEUE, max_concurrent=2))
    for _ in range(3):
        m.add_input("a", 0.0)
    got = starts(m, 0.0)  # no coalescing window in QUEUE mode
    assert len(got) == 2 and not any(s.take_all for s in got)
    for s in got:
        m.started(s.key, remaining=1, token=1)
    assert starts(m, 1.0) == []
    m.ended(got[0].key, remaining=1, released_token=None)
    assert len(starts(m, 1.0)) == 1


def test_max_turns_caps_the_process_oldest_session_first() -> None:
    m = Scheduler(COLLECT, max_turns=2)
    for t, sid in ((0.0, "a"), (0.01, "b"), (0.02, "c")):
        m.add_input(sid, t)
    got = starts(m, 1.0)
    assert [s.session_id for s in got] == ["a", "b"]
    for s in got:
        m.started(s.key, remaining=0, token=1)
    assert starts(m, 2.0) == []
    m.ended(got[1].key, remaining=0, released_token=1)
    assert [s.session_id for s in starts(m, 2.0)] == ["c"]


def test_throttle_lowers_one_sessions_concurrency() -> None:
    config = QueueConfig(mode=QueueMode.QUEUE, max_concurrent=3)
    m = Scheduler(config, throttle=lambda sid: 1 if sid == "near-limit" else None)
    for sid in ("near-limit", "free"):
        for _ in range(3):
            m.add_input(sid, 0.0)
    got = starts(m, 0.0)
    assert sorted(s.session_id for s in got) == ["free"] * 3 + ["near-limit"]


def test_a_broken_throttle_serializes_and_is_reported() -> None:
    errors: list[str] = []

    def throttle(sid: str) -> int:
        raise RuntimeError("boom")

    config = QueueConfig(mode=QueueMode.QUEUE, max_concurrent=3)
    m = Scheduler(config, throttle=throttle, on_throttle_error=lambda s, e: errors.append(s))
    for _ in range(3):
        m.add_input("a", 0.0)
    assert len(starts(m, 0.0)) == 1
    assert errors == ["a"]


def test_stop_cancels_the_running_turn_and_forgets_pending_input() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (s,) = starts(m, 1.0)
    m.started(s.key, remaining=0, token=1)
    m.add_input("a", 1.1)
    had, effects = m.stop("a")
    assert had and effects == [Cancel(s.key)]
    assert m.turns_of("a") == 1, "an unwinding turn still counts as running"
    m.ended(s.key, remaining=0, released_token=None)
    assert starts(m, 5.0) == []


def test_a_stop_during_the_start_transaction_cancels_the_turn_on_arrival() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (s,) = starts(m, 1.0)
    m.stop("a")
    assert m.started(s.key, remaining=0, token=1) is True


def test_cancel_one_cancels_the_oldest_and_keeps_pending() -> None:
    m = Scheduler(QueueConfig(mode=QueueMode.QUEUE, max_concurrent=2))
    for _ in range(3):
        m.add_input("a", 0.0)
    first, second = starts(m, 0.0)
    m.started(first.key, remaining=2, token=1)
    m.started(second.key, remaining=1, token=1)
    assert m.cancel_one("a") == Cancel(first.key)
    assert m.cancel_one("a") == Cancel(second.key)
    assert m.cancel_one("a") is None
    m.ended(first.key, remaining=1, released_token=None)
    assert len(starts(m, 0.0)) == 1, "pending input was kept"


def test_reset_forgets_running_turns_so_new_input_starts_at_once() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (old,) = starts(m, 1.0)
    m.started(old.key, remaining=0, token=1)
    forgotten, effects = m.reset()
    assert forgotten == [old.key] and effects == [Cancel(old.key)]
    assert m.generation == 1 and m.active == 0
    m.add_input("a", 2.0)
    (new,) = starts(m, 2.1)
    assert m.started(new.key, remaining=0, token=1) is False
    # The old generation's completion is ignored: the new turn still runs alone.
    assert m.ended(old.key, remaining=5, released_token=1) == []
    assert m.turns_of("a") == 1 and starts(m, 9.0) == []


def test_interrupt_cancels_the_running_turn_and_the_new_input_runs_after_it() -> None:
    m = Scheduler(QueueConfig(mode=QueueMode.INTERRUPT, debounce=0.05, max_wait=0.2))
    m.add_input("a", 0.0)
    (s,) = starts(m, 1.0)
    m.started(s.key, remaining=0, token=1)
    assert m.add_input("a", 1.5, interrupt=True) == [Cancel(s.key)]
    assert starts(m, 2.0) == [], "the interrupted turn is still unwinding"
    m.ended(s.key, remaining=1, released_token=None)
    assert len(starts(m, 2.0)) == 1


def test_a_lost_claim_cancels_the_sessions_turns() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (s,) = starts(m, 1.0)
    m.started(s.key, remaining=0, token=7)
    assert m.tokens() == {"a": 7}
    assert m.claim_lost("a") == [Cancel(s.key)]
    assert m.tokens() == {}


def test_a_busy_session_waits_until_retry_and_an_idle_claim_is_released() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (s,) = starts(m, 1.0)
    assert m.start_failed(s.key, 1.0, reason="busy", retry_at=3.0) == []
    assert starts(m, 2.0) == [] and m.session_count() == 0  # forgotten: another runs it
    m.add_input("b", 0.0)
    (b,) = starts(m, 1.0)
    m.started(b.key, remaining=0, token=4)
    assert m.ending(b.key) is True
    assert m.ended(b.key, remaining=0, released_token=None) == [Release("b", 4)]
    m.released("b", 4)
    assert m.session_count() == 0


def test_a_failed_start_is_retried_later() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (s,) = starts(m, 1.0)
    m.start_failed(s.key, 1.0, reason="error")
    assert starts(m, 1.5) == []
    assert len(starts(m, 2.0)) == 1


def test_discovered_input_opens_a_window_from_its_submit_time() -> None:
    m = Scheduler(COLLECT)
    m.discover("a", 2, first_at=-10.0)  # submitted long ago by another process
    assert len(starts(m, 0.0)) == 1


def test_close_cancels_running_turns_and_starts_nothing() -> None:
    m = Scheduler(COLLECT)
    m.add_input("a", 0.0)
    (s,) = starts(m, 1.0)
    m.started(s.key, remaining=0, token=1)
    m.add_input("b", 1.0)
    assert m.close() == [Cancel(s.key)]
    assert m.due(9.0) == ([], None)


# -- the model test ----------------------------------------------------------------------------

SESSIONS = ("a", "b", "c")


@dataclass
class Flight:
    key: int
    session_id: str
    take_all: bool
    cancelled: bool = False


@dataclass
class Model:
    pending: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SESSIONS, 0))
    starting: dict[int, Flight] = field(default_factory=dict)
    running: dict[int, Flight] = field(default_factory=dict)
    consumed: int = 0
    submitted: int = 0
    discarded: int = 0


class SchedulerMachine(RuleBasedStateMachine):
    """Random sequences against a fake database; checks the scheduling invariants."""

    @initialize(
        mode=st.sampled_from([QueueMode.COLLECT, QueueMode.QUEUE, QueueMode.STEER]),
        concurrent=st.integers(1, 3),
        max_turns=st.none() | st.integers(1, 4),
    )
    def setup(self, mode: QueueMode, concurrent: int, max_turns: int | None) -> None:
        concurrent = concurrent if mode is QueueMode.QUEUE else 1
        self.config = QueueConfig(
            mode=mode, debounce=0.05, max_wait=0.2, cap=100, max_concurrent=concurrent
        )
        self.m = Scheduler(self.config, max_turns=max_turns)
        self.db = Model()
        self.now = 0.0
        self.generation_keys: set[int] = set()  # keys of the current generation

    # -- events ------------------------------------------------------------------------------

    @rule(sid=st.sampled_from(SESSIONS))
    def submit(self, sid: str) -> None:
        self.db.pending[sid] += 1
        self.db.submitted += 1
        self._cancels(self.m.add_input(sid, self.now))

    @rule(dt=st.sampled_from([0.0, 0.01, 0.03, 0.06, 0.25]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._due()

    @precondition(lambda self: self.db.starting)
    @rule(data=st.data())
    def start_result(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.db.starting)))
        flight = self.db.starting.pop(key)
        sid = flight.session_id
        if self.db.pending[sid] == 0:
            self._effects(self.m.start_failed(key, self.now, reason="empty"))
            self.generation_keys.discard(key)
            return
        taken = self.db.pending[sid] if flight.take_all else 1
        self.db.pending[sid] -= taken
        self.db.consumed += taken
        cancel = self.m.started(key, remaining=self.db.pending[sid], token=1)
        flight.cancelled = cancel
        self.db.running[key] = flight

    @precondition(lambda self: self.db.running)
    @rule(data=st.data())
    def turn_ends(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.db.running)))
        flight = self.db.running.pop(key)
        release = self.m.ending(key)
        sid = flight.session_id
        released = 1 if release and self.db.pending[sid] == 0 else None
        self._effects(self.m.ended(key, remaining=self.db.pending[sid], released_token=released))
        self.generation_keys.discard(key)

    @rule(sid=st.sampled_from(SESSIONS))
    def stop(self, sid: str) -> None:
        _, effects = self.m.stop(sid)
        self._cancels(effects)
        self.db.discarded += self.db.pending[sid]
        self.db.pending[sid] = 0

    @rule(sid=st.sampled_from(SESSIONS))
    def cancel_one(self, sid: str) -> None:
        cancel = self.m.cancel_one(sid)
        if cancel is not None:
            self._cancels([cancel])

    @rule()
    def reset(self) -> None:
        forgotten, effects = self.m.reset()
        assert set(forgotten) <= set(self.db.running)
        self._cancels(effects)
        self.generation_keys.clear()

    @rule(sid=st.sampled_from(SESSIONS))
    def claim_lost(self, sid: str) -> None:
        self._cancels(self.m.claim_lost(sid))
        # The other process now runs what was pending there.
        self.db.consumed += self.db.pending[sid]
        self.db.pending[sid] = 0

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def per_session_concurrency(self) -> None:
        for sid in SESSIONS:
            live = [
                f
                for f in (*self.db.starting.values(), *self.db.running.values())
                if f.session_id == sid and f.key in self.generation_keys
            ]
            assert len(live) == self.m.turns_of(sid) <= self.config.max_concurrent

    @invariant()
    def process_cap(self) -> None:
        assert self.m.active == len(self.generation_keys)
        if self.m.max_turns is not None:
            assert self.m.active <= self.m.max_turns

    @invariant()
    def input_is_conserved(self) -> None:
        db = self.db
        assert db.submitted == sum(db.pending.values()) + db.consumed + db.discarded

    def teardown(self) -> None:
        """Liveness: with every turn ending, all pending input is eventually consumed."""
        if not hasattr(self, "m"):
            return
        for _ in range(200):
            while self.db.starting or self.db.running:
                for key in sorted(self.db.starting):
                    flight = self.db.starting.pop(key)
                    sid = flight.session_id
                    if self.db.pending[sid] == 0:
                        self._effects(self.m.start_failed(key, self.now, reason="empty"))
                        continue
                    taken = self.db.pending[sid] if flight.take_all else 1
                    self.db.pending[sid] -= taken
                    self.m.started(key, remaining=self.db.pending[sid], token=1)
                    self.db.running[key] = flight
                for key in sorted(self.db.running):
                    flight = self.db.running.pop(key)
                    sid = flight.session_id
                    self._effects(
                        self.m.ended(key, remaining=self.db.pending[sid], released_token=None)
                    )
            self.now += 1.0
            self._due()
            if not self.db.starting and not any(self.db.pending.values()):
                break
        assert not any(self.db.pending.values()), f"input never ran: {self.db.pending}"

    # -- helpers -----------------------------------------------------------------------------

    def _due(self) -> None:
        got, wake = self.m.due(self.now)
        assert wake is None or wake > self.now, "a wake-up in the past would spin"
        for start in got:
            assert start.key not in self.db.starting and start.key not in self.db.running
            self.db.starting[start.key] = Flight(start.key, start.session_id, start.take_all)
            self.generation_keys.add(start.key)

    def _cancels(self, effects: list[Cancel] | list[Cancel | Start | Release]) -> None:
        for effect in effects:
            assert isinstance(effect, Cancel | Release)
            if isinstance(effect, Cancel):
                assert effect.key in self.db.running, "cancelled a turn that is not running"

    def _effects(self, effects: list[Cancel | Start | Release]) -> None:
        self._cancels(effects)


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_scheduler_model = SchedulerMachine.TestCase
