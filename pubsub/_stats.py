"""A frozen snapshot of a broker's counters, for telemetry.

Each (event, subscription) pair an event reaches ends in exactly one outcome, counted once:
``delivered``, ``conflated``, ``dropped`` (lossy, no place: lost) or ``must_deliver_dropped``
(not admitted in time, but kept queued as its key's newest state, unless the overflow was at
its bound). So, once no must-deliver wait is pending, the four add up to the sum of the
fan-outs; ``Subscription.lost`` counts what one subscription will never receive. In full:
docs/MODULES.md.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BrokerStats"]


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """Counters of one broker at one moment; all are totals since the broker was created."""

    subscribers: int
    """Subscriptions currently registered (closed and collected ones are gone)."""
    published: int
    """Calls to ``publish`` and ``publish_must_deliver`` / ``enqueue_must_deliver``."""
    delivered: int
    """(event, subscriber) pairs where the event joined the queue without superseding."""
    dropped: int
    """(event, subscriber) pairs lost by lossy ``publish`` (no place, nothing to supersede)."""
    must_deliver_dropped: int
    """(event, subscriber) pairs where a must-deliver event was not admitted in time."""
    conflated: int
    """(event, subscriber) pairs where the event superseded its key's queued replaceable one."""
