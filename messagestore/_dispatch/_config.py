"""What the dispatcher can be told: queue modes, drop policies, outcomes, ``QueueConfig``.

Everything here is plain data, checked when it is built: an impossible configuration fails at
``QueueConfig(...)`` with a ``ValueError`` naming the field, never later in a background task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from .._validation import storable

__all__ = [
    "MAX_INPUT_CHARS",
    "MAX_TURN_CHARS",
    "DropPolicy",
    "QueueConfig",
    "QueueMode",
    "ReplyConfig",
    "TurnOutcome",
    "check_seconds",
]

MAX_INPUT_CHARS = 1024 * 1024
"""Longest text one ``submit`` accepts (characters)."""

MAX_TURN_CHARS = 8 * 1024 * 1024
"""Most characters of input one turn takes; input beyond it waits for the next turn. Keeps a
turn's user message well under the store's per-field limit (16 Mi characters)."""


class QueueMode(StrEnum):
    """What happens to input that arrives while a turn runs for its session.

    ``COLLECT`` (default): it all becomes the next turn. ``QUEUE`` (alias ``FOLLOWUP``): one turn
    per input, in order; no coalescing window. ``INTERRUPT``: the running turn is cancelled,
    input that was waiting is dropped, and the new input runs. ``STEER``: the running turn may
    take it (``Turn.steering()``); what it leaves becomes the next turn.
    """

    COLLECT = "collect"
    QUEUE = "queue"
    FOLLOWUP = "queue"  # an alias: QueueMode.FOLLOWUP is QueueMode.QUEUE
    INTERRUPT = "interrupt"
    STEER = "steer"


class DropPolicy(StrEnum):
    """What ``cap`` does when a session's pending input is full.

    ``OLD``: drop the oldest pending input (outcome ``DROPPED``). ``NEW``: refuse the newcomer
    (``submit`` raises ``QueueFull``, outcome ``REJECTED``). ``SUMMARIZE``: drop the oldest but
    keep its first line in a note that the next turn's text starts with.
    """

    OLD = "old"
    NEW = "new"
    SUMMARIZE = "summarize"


class TurnOutcome(StrEnum):
    """How one input ended; ``Receipt.outcome()`` resolves to exactly one of these.

    ``COMPLETED``/``FAILED``/``CANCELLED``: the input was part of a turn that returned, raised
    (or was cut off by a crash), or was cancelled. Pending input discarded by ``stop`` is also
    ``CANCELLED``. ``DROPPED``: removed by the cap (``OLD``/``SUMMARIZE``), by an
    ``INTERRUPT``, or with its session (deleted while the input was pending or running; see
    ``Receipt.reason``). ``REJECTED``: refused by the cap (``NEW``). ``STALE``: submitted
    before a ``cancel_all`` and never run.
    """

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DROPPED = "dropped"
    REJECTED = "rejected"
    STALE = "stale"


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as float seconds, or ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (positive and value == 0):
        kind = "positive" if positive else "zero or more"
        raise ValueError(f"{name} must be {kind}, not {value!r}")
    return float(value)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int of at least 1, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """How input becomes turns (see ``QueueMode`` and ``DropPolicy``).

    ``debounce``: seconds the coalescing window stays open after each input for an idle
    session; ``max_wait``: the window closes at most this long after its first input (so a
    chatty user cannot starve the agent; must be at least ``debounce``). ``cap``: most pending
    inputs per session. ``max_concurrent``: turns of one session at once; above 1 only in
    ``QUEUE`` mode (every other mode builds a turn from what the previous one left).
    """

    mode: QueueMode = QueueMode.COLLECT
    debounce: float = 0.8
    max_wait: float = 5.0
    cap: int = 10
    drop: DropPolicy = DropPolicy.OLD
    max_concurrent: int = 1

    def __post_init__(self) -> None:
        try:
            mode = QueueMode(self.mode)
        except ValueError:
            known = ", ".join(m.value for m in QueueMode)
            raise ValueError(f"mode must be one of {known}, not {self.mode!r}") from None
        try:
            drop = DropPolicy(self.drop)
        except ValueError:
            known = ", ".join(p.value for p in DropPolicy)
            raise ValueError(f"drop must be one of {known}, not {self.drop!r}") from None
        debounce = check_seconds("debounce", self.debounce)
        max_wait = check_seconds("max_wait", self.max_wait)
        if max_wait < debounce:
            raise ValueError(
                f"max_wait ({max_wait}) must be at least debounce ({debounce}): the window "
                "closes at most max_wait after its first input"
            )
        _check_count("cap", self.cap)
        _check_count("max_concurrent", self.max_concurrent)
        if self.max_concurrent > 1 and mode is not QueueMode.QUEUE:
            raise ValueError(
                f"max_concurrent={self.max_concurrent} needs mode QUEUE: in {mode.name} mode "
                "each turn is built from what the previous one left, so turns of one session "
                "run one at a time"
            )
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "drop", drop)
        object.__setattr__(self, "debounce", debounce)
        object.__setattr__(self, "max_wait", max_wait)

    @property
    def coalesces(self) -> bool:
        """True if input waits for a window (every mode but ``QUEUE``)."""
        return self.mode is not QueueMode.QUEUE


@dataclass(frozen=True, slots=True)
class ReplyConfig:
    """Opt-in (``Dispatcher(..., reply=ReplyConfig(...))``): each turn's assistant reply is
    created in the turn's start transaction, with this ``model`` and ``provider``, so a
    turn costs one transaction less.

    ``turn.reply()`` then returns that message (the first call; a later call creates another
    one), already stored and announced; a ``model`` or ``provider`` given to it replaces the
    configured one, stored with the reply's next ``update()``. A turn that never calls
    ``reply()`` still has the reply (``turn.replies``), finished like any reply left
    unfinished when the turn ends (also a turn cancelled before ``run_turn`` did anything:
    an empty reply, ``Finish(CANCELED)``). Being created first, the reply comes before the
    user messages of input the turn takes later with ``steering()``.
    """

    model: str = ""
    provider: str = ""

    def __post_init__(self) -> None:
        for name in ("model", "provider"):
            value = getattr(self, name)
            if not isinstance(value, str) or not storable(value):
                raise ValueError(
                    f"{name} must be a str without NUL characters or lone surrogates, not {value!r}"
                )
