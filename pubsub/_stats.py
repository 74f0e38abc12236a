"""A frozen snapshot of a broker's counters, for telemetry.

Every publish is fanned out to the subscriptions it reaches at that moment (all of them, or,
with topics, the wildcard ones and those of its topic), and each (event, subscription) pair
ends in exactly one outcome, counted once:

* ``delivered``: the event joined the subscription's queue without removing anything: admitted
  at once, kept in the overflow as its key's newest state (lossy ``UPDATED``), or, for a
  must-deliver event that had to wait, admitted before the deadline (or still queued when the
  subscription closed or the broker shut down: not a drop, the subscriber is gone or drains
  it).
* ``conflated``: the event joined the queue by superseding the replaceable entry of its key,
  which was removed. For a must-deliver event that had to wait, counted when it is admitted
  in time (else it is a ``must_deliver_dropped``, like any late one).
* ``dropped``: lossy ``publish`` found no place (full and nothing to supersede, or no key
  function, or the overflow at its bound); the subscription loses the event for good.
* ``must_deliver_dropped``: a must-deliver event was not admitted within
  ``must_deliver_timeout`` (or its publisher stopped waiting first). The event is *kept*: it
  stays queued as its key's newest state and a draining consumer still receives it, unless a
  newer event of its key supersedes it. Rarely (the overflow at its bound and nothing to
  supersede) the event could not be queued at all and is really lost; only that case counts
  in ``Subscription.lost``.

So, once no must-deliver publish is still waiting,
``delivered + conflated + dropped + must_deliver_dropped == sum of the fan-outs``.

A supersession replaces one queued event with one newer event, so the number of queued events
only grows by ``delivered`` pairs and by kept must-deliver events that superseded nothing on
arrival. Hence, while no must-deliver wait times out, a subscription that drains to the end
receives exactly as many events as were counted ``delivered`` for it. ``Subscription.lost`` is
the per-subscription count of what it will never receive.
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
