"""Telemetry of the dispatcher: ``DispatcherStats`` snapshots and blinker signals.

Receivers run synchronously in the event loop; keep them quick. Every signal is sent with the
``Dispatcher`` as sender: ``turn_started`` (``session_id``, ``turn_id``, ``inputs``,
``latency``: per input, seconds from submit to turn start by the database clock),
``turn_failed`` (``session_id``, ``turn_id``, ``error``) and ``inputs_dropped``
(``session_id``, ``input_ids``, ``outcome``: ``DROPPED`` or ``REJECTED``, ``reason``: ``"cap"``,
``"interrupt"`` or ``"session_deleted"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from blinker import Signal

__all__ = ["Counters", "DispatcherStats", "inputs_dropped", "turn_failed", "turn_started"]

turn_started = Signal("messagestore.dispatch.turn_started")
turn_failed = Signal("messagestore.dispatch.turn_failed")
inputs_dropped = Signal("messagestore.dispatch.inputs_dropped")


@dataclass(slots=True)
class Counters:
    """The dispatcher's running totals (mutated in the event loop only)."""

    inputs_submitted: int = 0
    duplicates: int = 0
    inputs_run: int = 0
    inputs_coalesced: int = 0
    inputs_steered: int = 0
    dropped: int = 0
    rejected: int = 0
    stale: int = 0
    discarded: int = 0
    turns_started: int = 0
    turns_completed: int = 0
    turns_failed: int = 0
    turns_cancelled: int = 0
    turns_repaired: int = 0
    polls: int = 0
    start_conflicts: int = 0
    claims_lost: int = 0
    database_errors: int = 0


def _meta(unit: str, *, monotonic: bool = True) -> dict[str, Any]:
    """Field metadata for exporters (``messagestore.telemetry``): the unit, and whether the
    field is a running total (a counter) or a current value."""
    return {"unit": unit, "monotonic": monotonic}


@dataclass(frozen=True, slots=True)
class DispatcherStats:
    """A snapshot of a dispatcher's counters (``Dispatcher.stats()``).

    ``pending``: inputs this process believes wait for a turn; ``running``: turns running
    here now (unwinding ones included). ``inputs_run``: inputs consumed by turns started here;
    ``inputs_coalesced``: of those, inputs that joined a turn another input opened (so
    ``turns_started == inputs_run - inputs_coalesced``); ``inputs_steered``: taken by running
    turns through ``Turn.steering()``. ``dropped``/``rejected``/``stale``/``discarded``:
    inputs that ended ``DROPPED`` (cap, interrupt, or session deleted), ``REJECTED`` (cap,
    ``NEW``), ``STALE``
    (``cancel_all``), or ``CANCELLED`` while pending (``stop``). ``turns_repaired``: turns of
    dead processes this one marked interrupted. ``start_conflicts``: starts that found the
    session claimed by another live process; ``claims_lost``: claims taken over under this one.
    """

    pending: int = field(metadata=_meta("{input}", monotonic=False))
    running: int = field(metadata=_meta("{turn}", monotonic=False))
    inputs_submitted: int = field(metadata=_meta("{input}"))
    duplicates: int = field(metadata=_meta("{input}"))
    inputs_run: int = field(metadata=_meta("{input}"))
    inputs_coalesced: int = field(metadata=_meta("{input}"))
    inputs_steered: int = field(metadata=_meta("{input}"))
    dropped: int = field(metadata=_meta("{input}"))
    rejected: int = field(metadata=_meta("{input}"))
    stale: int = field(metadata=_meta("{input}"))
    discarded: int = field(metadata=_meta("{input}"))
    turns_started: int = field(metadata=_meta("{turn}"))
    turns_completed: int = field(metadata=_meta("{turn}"))
    turns_failed: int = field(metadata=_meta("{turn}"))
    turns_cancelled: int = field(metadata=_meta("{turn}"))
    turns_repaired: int = field(metadata=_meta("{turn}"))
    polls: int = field(metadata=_meta("{poll}"))
    start_conflicts: int = field(metadata=_meta("{start}"))
    claims_lost: int = field(metadata=_meta("{claim}"))
    database_errors: int = field(metadata=_meta("{error}"))

    @classmethod
    def of(cls, counters: Counters, *, pending: int, running: int) -> DispatcherStats:
        values = {f.name: getattr(counters, f.name) for f in fields(Counters)}
        return cls(pending=pending, running=running, **values)
