"""The scheduling state machine: when a session's next turn starts, and which turns to cancel.

Synchronous code with no database, no event loop and no clock: every method takes the facts
(``now``, what a transaction found) and returns effects (``Start``, ``Cancel``, ``Release``) for
the driver, so its rules can be tested exhaustively. Its per-session counts are hints that
every transaction corrects. Timing follows ``QueueConfig`` (a window extended by ``debounce``,
closed by ``max_wait``; ``QUEUE`` starts each input as a slot frees). After ``reset`` the old
generation's turns are forgotten. The story: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from ._config import QueueConfig, QueueMode

__all__ = ["Cancel", "Effect", "Release", "Scheduler", "Start"]

# After a start transaction failed (database error), the session waits this long to retry.
START_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Start:
    """Run a start transaction for ``session_id``: consume all pending input, or one
    (``take_all`` False, ``QUEUE`` mode), and start turn ``key`` with it."""

    session_id: str
    key: int
    take_all: bool


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel the task running turn ``key``."""

    key: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give up the claim on ``session_id`` (held with ``token``): nothing left to do there."""

    session_id: str
    token: int


Effect = Start | Cancel | Release


@dataclass(slots=True)
class _Session:
    pending: int = 0
    first_at: float | None = None  # the coalescing window: first and newest input
    last_at: float | None = None
    starting: dict[int, int] = field(default_factory=dict)  # key -> epoch at Start
    running: dict[int, bool] = field(default_factory=dict)  # key -> cancel requested
    token: int | None = None  # the claim this process believes it holds
    blocked_until: float = 0.0
    epoch: int = 0  # bumped by stop / cancel_all / interrupt: starts issued before are void

    def active(self) -> int:
        return len(self.starting) + len(self.running)

    def idle(self) -> bool:
        return not self.pending and not self.starting and not self.running

    def open_window(self, at: float) -> None:
        if self.first_at is None:
            self.first_at = at
        self.last_at = at if self.last_at is None else max(self.last_at, at)


class Scheduler:
    """Sessions, windows, turn slots and generations of one dispatcher."""

    def __init__(
        self,
        config: QueueConfig,
        *,
        max_turns: int | None = None,
        throttle: Callable[[str], int | None] | None = None,
        on_throttle_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.config = config
        self.max_turns = max_turns
        self._throttle = throttle
        self._on_throttle_error = on_throttle_error
        self._sessions: dict[str, _Session] = {}
        self._waiting: set[str] = set()  # sessions whose pending hint is positive
        self._keys = itertools.count(1)
        self._owner: dict[int, str] = {}  # live key -> session (current generation)
        self._forgotten: dict[int, str] = {}  # keys of older generations, still unwinding
        self.generation = 0
        self.active = 0  # current-generation turns starting or running, all sessions
        self.closing = False

    # -- what arrives ----------------------------------------------------------------------

    def add_input(self, session_id: str, now: float, *, interrupt: bool = False) -> list[Effect]:
        """An input for the session was committed in this process.

        ``interrupt``: the submit transaction dropped the waiting input and flagged the running
        turns (``INTERRUPT`` mode): cancel them here, and void starts in flight.
        """
        s = self._session(session_id)
        effects: list[Effect] = []
        if interrupt:
            s.epoch += 1
            s.pending = 0
            s.first_at = s.last_at = None
            effects = self._cancel_running(s)
        s.pending += 1
        s.open_window(now)
        self._waiting.add(session_id)
        return effects

    def hint(self, session_id: str, now: float) -> None:
        """Something may be pending for the session (a poke naming it)."""
        s = self._session(session_id)
        if s.pending == 0:
            s.pending = 1
            s.open_window(now)
            self._waiting.add(session_id)

    def discover(self, session_id: str, count: int, first_at: float) -> None:
        """A poll found ``count`` pending inputs, the oldest submitted at ``first_at``."""
        s = self._session(session_id)
        if s.starting or count <= 0:
            return  # the start in flight reports what is left
        if count > s.pending:
            s.pending = count
            if s.first_at is None or first_at < s.first_at:
                s.first_at = first_at
            if s.last_at is None:
                s.last_at = first_at
        self._waiting.add(session_id)

    # -- when turns start --------------------------------------------------------------------

    def due(self, now: float) -> tuple[list[Start], float | None]:
        """The starts due at ``now``, and when to call again (None: only on a change)."""
        starts: list[Start] = []
        wake: float | None = None
        if self.closing:
            return starts, None
        order = sorted(self._waiting, key=self._waiting_since)
        for session_id in order:
            s = self._sessions[session_id]
            if s.pending <= 0:
                self._waiting.discard(session_id)
                continue
            at = self._ready_at(s)
            if at > now:
                wake = at if wake is None else min(wake, at)
                continue
            limit = self._limit(session_id)
            while s.pending > 0 and s.active() < limit and self._slot_free():
                starts.append(self._start(session_id, s))
        return starts, wake

    def _waiting_since(self, session_id: str) -> float:
        first = self._sessions[session_id].first_at
        return float("-inf") if first is None else first

    def _ready_at(self, s: _Session) -> float:
        at = s.blocked_until
        if self.config.coalesces and s.first_at is not None and s.last_at is not None:
            closes = min(s.last_at + self.config.debounce, s.first_at + self.config.max_wait)
            at = max(at, closes)
        return at

    def _limit(self, session_id: str) -> int:
        limit = self.config.max_concurrent
        if self._throttle is not None:
            try:
                lowered = self._throttle(session_id)
            except Exception as exc:  # a broken throttle serializes, it does not stall
                if self._on_throttle_error is not None:
                    self._on_throttle_error(session_id, exc)
                return 1
            if lowered is not None:
                limit = min(limit, max(1, int(lowered)))
        return limit

    def _slot_free(self) -> bool:
        return self.max_turns is None or self.active < self.max_turns

    def _start(self, session_id: str, s: _Session) -> Start:
        key = next(self._keys)
        take_all = self.config.mode is not QueueMode.QUEUE
        if take_all:
            s.pending = 0
            s.first_at = s.last_at = None
        else:
            s.pending -= 1
        s.starting[key] = s.epoch
        self._owner[key] = session_id
        self.active += 1
        return Start(session_id, key, take_all)

    # -- what the start transaction found ------------------------------------------------------

    def started(self, key: int, *, remaining: int, token: int) -> bool:
        """Turn ``key`` started (inputs consumed, user message stored) holding ``token``.

        Returns True if it must be cancelled at once: a stop, cancel_all, interrupt, reset or
        close came while its start transaction ran.
        """
        if key in self._forgotten:
            self._session(self._forgotten[key]).token = token
            return True
        session_id = self._owner[key]
        s = self._sessions[session_id]
        epoch = s.starting.pop(key)
        s.token = token
        s.running[key] = False
        others = len(s.starting)
        s.pending = max(s.pending, remaining - others)
        if s.pending > 0:
            s.open_window(s.last_at if s.last_at is not None else float("-inf"))
            self._waiting.add(session_id)
        if epoch != s.epoch or self.closing:
            s.running[key] = True
            return True
        return False

    def start_failed(
        self, key: int, now: float, *, reason: str, retry_at: float | None = None
    ) -> list[Effect]:
        """The start transaction of ``key`` did not start a turn.

        ``reason``: ``"empty"`` (nothing was pending), ``"busy"`` (another live process holds
        the session's claim until ``retry_at``), ``"lost"`` (it holds the claim this process
        believed it held: cancel this process's turns there), ``"gone"`` (the session was
        deleted) or ``"error"`` (the transaction failed; retried after ``START_RETRY``).
        """
        session_id = self._forgotten.pop(key, None)
        forgotten = session_id is not None
        if session_id is None:
            session_id = self._owner.pop(key)
            self.active -= 1
        s = self._sessions.get(session_id)
        if s is None:
            return []
        if not forgotten:
            s.starting.pop(key, None)
        effects: list[Effect] = []
        if reason == "error":
            s.pending = max(s.pending, 1)
            s.blocked_until = now + START_RETRY
            self._waiting.add(session_id)
        elif reason in ("busy", "lost", "gone"):
            # Another process runs this session (or it no longer exists): stop driving it.
            s.pending = 0
            s.first_at = s.last_at = None
            s.blocked_until = retry_at if retry_at is not None else now
            if reason != "busy" or s.token is not None:
                s.token = None
                effects = self._cancel_running(s)
        effects.extend(self._settle(session_id, s))
        return effects

    def steered(self, session_id: str, remaining: int) -> None:
        """A running turn took pending input (``Turn.steering()``); ``remaining`` is left."""
        s = self._sessions.get(session_id)
        if s is not None:
            s.pending = remaining
            if remaining == 0:
                s.first_at = s.last_at = None

    # -- how turns end ---------------------------------------------------------------------

    def ending(self, key: int) -> bool:
        """Turn ``key`` is about to record its end: should that also release the claim?"""
        session_id = self._owner.get(key)
        if session_id is None:
            return False
        s = self._sessions[session_id]
        return (
            s.pending == 0
            and not s.starting
            and len(s.running) == 1
            and not self.closing
            and not self._unwinding(session_id)
        )

    def ended(self, key: int, *, remaining: int | None, released_token: int | None) -> list[Effect]:
        """Turn ``key`` ended and its end was recorded (``remaining`` inputs still pending, or
        None if unknown; ``released_token``: the claim was released with that token)."""
        session_id = self._forgotten.pop(key, None)
        if session_id is None:
            session_id = self._owner.pop(key, None)
            if session_id is None:
                return []
            self.active -= 1
            self._sessions[session_id].running.pop(key, None)
        s = self._sessions.get(session_id)
        if s is None:
            return []
        if released_token is not None and s.token == released_token:
            s.token = None
        if remaining is not None and remaining > s.pending:
            s.pending = remaining
            s.open_window(float("-inf"))
        if s.pending > 0:
            self._waiting.add(session_id)
        return self._settle(session_id, s)

    def released(self, session_id: str, token: int) -> None:
        """The claim held with ``token`` was released."""
        s = self._sessions.get(session_id)
        if s is not None and s.token == token:
            s.token = None
            self._settle(session_id, s)

    def idle_claims(self) -> list[Effect]:
        """Releases for idle sessions still holding a claim (a release that found work)."""
        effects: list[Effect] = []
        for session_id, s in list(self._sessions.items()):
            effects.extend(self._settle(session_id, s))
        return effects

    # -- stop, cancel, reset, close ----------------------------------------------------------

    def stop(self, session_id: str) -> tuple[bool, list[Effect]]:
        """Cancel the session's turns, forget its pending input; (had anything, effects)."""
        s = self._sessions.get(session_id)
        if s is None:
            return False, []
        had = bool(s.pending or s.starting or any(not c for c in s.running.values()))
        s.epoch += 1
        s.pending = 0
        s.first_at = s.last_at = None
        self._waiting.discard(session_id)
        return had, self._cancel_running(s)

    def cancel_one(self, session_id: str) -> Cancel | None:
        """Cancel the oldest running turn of the session that is not being cancelled."""
        s = self._sessions.get(session_id)
        if s is None:
            return None
        for key, cancelling in s.running.items():
            if not cancelling:
                s.running[key] = True
                return Cancel(key)
        return None

    def cancel_key(self, key: int) -> Cancel | None:
        """Cancel turn ``key`` (its cancellation was requested through the database)."""
        session_id = self._owner.get(key)
        if session_id is None:
            return None
        s = self._sessions[session_id]
        if s.running.get(key) is False:
            s.running[key] = True
            return Cancel(key)
        return None

    def claim_lost(self, session_id: str) -> list[Effect]:
        """Another process took the session's claim: cancel this process's turns there."""
        s = self._sessions.get(session_id)
        if s is None:
            return []
        s.token = None
        s.epoch += 1
        s.pending = 0
        s.first_at = s.last_at = None
        return self._cancel_running(s)

    def gone(self, session_id: str) -> list[Effect]:
        """The session was deleted (its input and turns with it): forget its pending input,
        hold no claim there, cancel this process's turns there."""
        return self.claim_lost(session_id)

    def reset(self) -> tuple[list[int], list[Effect]]:
        """A new generation: forget every turn now starting or running and cancel it.

        Returns the keys of the running turns forgotten, and the effects.
        """
        self.generation += 1
        forgotten: list[int] = []
        effects: list[Effect] = []
        for session_id, s in self._sessions.items():
            for key in s.starting:
                self._forgotten[key] = session_id
                del self._owner[key]
            for key, cancelling in s.running.items():
                self._forgotten[key] = session_id
                del self._owner[key]
                forgotten.append(key)
                if not cancelling:
                    effects.append(Cancel(key))
            s.starting.clear()
            s.running.clear()
        self.active = 0
        return forgotten, effects

    def close(self) -> list[Effect]:
        """No more starts; cancel every running turn (starts in flight cancel on arrival)."""
        self.closing = True
        effects: list[Effect] = []
        for s in self._sessions.values():
            effects.extend(self._cancel_running(s))
        for key in self._forgotten:
            effects.append(Cancel(key))
        return effects

    # -- reads -------------------------------------------------------------------------------

    def tokens(self) -> dict[str, int]:
        """The claims this process believes it holds."""
        return {sid: s.token for sid, s in self._sessions.items() if s.token is not None}

    def session_of(self, key: int) -> str | None:
        """The session of a live or forgotten turn key."""
        return self._owner.get(key) or self._forgotten.get(key)

    def is_current(self, key: int) -> bool:
        """True if ``key`` belongs to the current generation and has not ended."""
        return key in self._owner

    def running_keys(self, session_id: str) -> list[int]:
        """The session's running turns, oldest first."""
        s = self._sessions.get(session_id)
        return [] if s is None else list(s.running)

    @property
    def pending(self) -> int:
        """Inputs believed pending, all sessions."""
        return sum(self._sessions[sid].pending for sid in self._waiting)

    @property
    def running(self) -> int:
        """Turns started and not yet ended (unwinding and older generations included)."""
        return sum(len(s.running) for s in self._sessions.values()) + len(self._forgotten)

    def session_count(self) -> int:
        """Sessions with state held (for tests: idle sessions are forgotten)."""
        return len(self._sessions)

    def turns_of(self, session_id: str) -> int:
        """Current-generation turns starting or running for the session."""
        s = self._sessions.get(session_id)
        return 0 if s is None else s.active()

    # -- internals -----------------------------------------------------------------------------

    def _session(self, session_id: str) -> _Session:
        s = self._sessions.get(session_id)
        if s is None:
            s = self._sessions[session_id] = _Session()
        return s

    def _cancel_running(self, s: _Session) -> list[Effect]:
        effects: list[Effect] = []
        for key, cancelling in s.running.items():
            if not cancelling:
                s.running[key] = True
                effects.append(Cancel(key))
        return effects

    def _unwinding(self, session_id: str) -> bool:
        """True while a turn of an older generation of the session has not ended."""
        return any(v == session_id for v in self._forgotten.values())

    def _settle(self, session_id: str, s: _Session) -> list[Effect]:
        """Release the claim of a session with nothing left, and forget an idle session."""
        if not s.idle():
            return []
        effects: list[Effect] = []
        if s.token is not None:
            if not self._unwinding(session_id):
                effects.append(Release(session_id, s.token))
            return effects  # forgotten once ``released`` confirms
        if not self._unwinding(session_id):
            self._waiting.discard(session_id)
            del self._sessions[session_id]
        return effects
