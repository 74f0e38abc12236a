"""The dispatcher: inbound user input becomes agent turns, durable in the store's database.

::

    from messagestore import open_store
    from messagestore.dispatch import Dispatcher, QueueConfig, Turn

    async def run_turn(turn: Turn) -> None: ...

    async with open_store() as store, Dispatcher(store, run_turn, QueueConfig()) as dispatcher:
        receipt = await dispatcher.submit(session_id, "hello")
        outcome = await receipt.outcome()

``Dispatcher`` decides when a turn starts and what it holds (``QueueConfig``: ``QueueMode``,
``DropPolicy``, the coalesce window, the cap); ``Receipt`` follows one input to its
``TurnOutcome``; ``Turn`` is what ``run_turn`` receives (``TurnInput``, ``Steering``);
``InputRecord`` and ``TurnRecord`` are inputs and turns as the database knows them (``find_input``,
``get_input``, ``active_input``, ``get_turn``: for following a turn from another process);
``DispatcherStats`` and the blinker signals ``turn_started``, ``turn_failed`` and
``inputs_dropped`` report what it does. ``QueueFull`` (also in ``messagestore``, with the other
errors) is raised when the cap is reached under ``DropPolicy.NEW``.
"""

from ._dispatch import (
    Dispatcher,
    DispatcherStats,
    DropPolicy,
    InputRecord,
    QueueConfig,
    QueueMode,
    Receipt,
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
    "Steering",
    "Turn",
    "TurnInput",
    "TurnOutcome",
    "TurnRecord",
    "inputs_dropped",
    "turn_failed",
    "turn_started",
]
