"""A frozen snapshot of a broker's counters, for telemetry.

Every publish is fanned out to the subscribers registered at that moment, and each
(event, subscriber) pair ends in exactly one outcome:

* ``delivered``: the event took a new place in the subscriber's buffer (at once, or after a
  must-deliver wait). Every delivered event is what a draining consumer receives, unless the
  consumer closes its subscription first (``close()`` discards what is still buffered).
* ``conflated``: a lossy ``UPDATED`` replaced an older queued event of the same key in place
  (see ``pubsub._broker``); the subscriber still sees the newest state, one event fewer.
* ``dropped``: lossy ``publish`` found the buffer full; the subscriber never sees the event.
* ``must_deliver_dropped``: ``publish_must_deliver`` waited ``must_deliver_timeout`` (or was
  cancelled while waiting) and the subscriber still had no room.
* not counted: the subscriber closed, or the broker shut down, while a must-deliver publish was
  waiting for it. Nobody is left to miss the event, so it is not a drop.

So, while no subscription closes mid-wait,
``delivered + conflated + dropped + must_deliver_dropped == sum of the fan-outs``.
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
    """Calls to ``publish`` and ``publish_must_deliver``."""
    delivered: int
    """(event, subscriber) pairs where the event entered the subscriber's buffer."""
    dropped: int
    """(event, subscriber) pairs lost by lossy ``publish`` to a full buffer."""
    must_deliver_dropped: int
    """(event, subscriber) pairs lost by ``publish_must_deliver`` after its bounded wait."""
    conflated: int
    """Lossy ``UPDATED`` events that replaced a queued event of the same key in place."""
