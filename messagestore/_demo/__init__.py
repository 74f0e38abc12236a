"""Simulated agents (and users) shared by the demo, the benchmarks and the tests.

``simulated_agent`` is a ``run_turn`` that answers every input without a model (reasoning, a
tool call, its result, a streamed answer; ``serve --demo``, ``worker --demo``);
``run_workload`` streams agent replies into a store (``WorkloadConfig``, ``WorkloadResult``,
``StreamStats``); ``run_users`` sends bursts of user input through a dispatcher to
``toy_agent`` (``UserConfig``, ``UserResult``). Built on the public store API only.
"""

from ._agent import DEFAULT_RATE, simulated_agent
from ._users import UserConfig, UserResult, run_users, toy_agent
from ._workload import StreamStats, WorkloadConfig, WorkloadResult, run_workload

__all__ = [
    "DEFAULT_RATE",
    "StreamStats",
    "UserConfig",
    "UserResult",
    "WorkloadConfig",
    "WorkloadResult",
    "run_users",
    "run_workload",
    "simulated_agent",
    "toy_agent",
]
