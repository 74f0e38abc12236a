"""The dispatcher: inbound user input becomes agent turns, durable in the store's database.

::

    async with open_store() as store, Dispatcher(store, run_turn, QueueConfig()) as dispatcher:
        receipt = await dispatcher.submit(session_id, "hello")
        outcome = await receipt.outcome()

``Dispatcher`` decides when a turn starts and what it holds (``QueueConfig``: ``QueueMode``,
``DropPolicy``, the window, the cap); ``Receipt`` follows one input to its ``TurnOutcome``;
``Turn`` is what ``run_turn`` receives; ``InputRecord`` and ``TurnRecord`` are inputs and
turns as stored (``find_input``, ``get_input``, ``active_input``, ``get_turn``). README,
"Handling user input"; the story: docs/ARCHITECTURE.md.
"""

from ._dispatch import (
    Dispatcher,
    DispatcherStats,
    DropPolicy,
    InputRecord,
    QueueConfig,
    QueueMode,
    Receipt,
    ReplyConfig,
    Steering,
    Turn,
    TurnInput,
    TurnOutcome,
    TurnRecord,
    inputs_dropped,
    turn_failed,
    turn_started,
)
from ._errors import QueueFull

__all__ = [
    "Dispatcher",
    "DispatcherStats",
    "DropPolicy",
    "InputRecord",
    "QueueConfig",
    "QueueFull",
    "QueueMode",
    "Receipt",
    "ReplyConfig",
    "Steering",
    "Turn",
    "TurnInput",
    "TurnOutcome",
    "TurnRecord",
    "inputs_dropped",
    "turn_failed",
    "turn_started",
]
