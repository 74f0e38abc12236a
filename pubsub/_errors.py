"""Errors that ``pubsub`` raises on purpose.

The hierarchy::

    PubSubError
    ├── SubscriptionEnded   receive() on a closed or shut-down, drained subscription
    └── WouldBlock          receive_nowait() on an open subscription with nothing buffered

``async for`` over a subscription turns ``SubscriptionEnded`` into a clean end of iteration,
so most consumers never see either error. Misuse — calling the broker from a thread that does
not own it, or two tasks receiving from one subscription at once — raises ``RuntimeError``.
"""

from __future__ import annotations

__all__ = ["PubSubError", "SubscriptionEnded", "WouldBlock"]


class PubSubError(Exception):
    """Base class of every error ``pubsub`` raises deliberately."""


class SubscriptionEnded(PubSubError):
    """The subscription is closed, or its broker shut down and its buffer is drained."""


class WouldBlock(PubSubError):
    """No event is buffered right now; ``receive()`` would have to wait."""
