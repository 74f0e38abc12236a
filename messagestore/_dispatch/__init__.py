"""The dispatcher: inbound user input becomes agent turns, durable in the store's database.

Public names are re-exported by ``messagestore.dispatch``; see ``Dispatcher``.
Modules, one concern each: ``_config`` (modes, policies, outcomes, ``QueueConfig``),
``_machine`` (the scheduling state machine, synchronous and database-free), ``_tables`` (its
tables), ``_persist``, ``_persist_turns`` and ``_persist_control`` (all SQL, one transaction
per function, run through ``Store.transaction``), ``_receipts``, ``_records`` (inputs and turns
as stored), ``_turn``, ``_runner`` (one turn from start to recorded end), ``_poller`` (what
the database knows), ``_routing``, ``_stats`` (counters and signals), ``_dispatcher`` (the
public class).
"""

from ._config import DropPolicy, QueueConfig, QueueMode, ReplyConfig, TurnOutcome
from ._dispatcher import Dispatcher
from ._receipts import Receipt
from ._records import InputRecord, TurnRecord
from ._stats import DispatcherStats, inputs_dropped, turn_failed, turn_started
from ._turn import Steering, Turn, TurnInput

__all__ = [
    "Dispatcher",
    "DispatcherStats",
    "DropPolicy",
    "InputRecord",
    "QueueConfig",
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
