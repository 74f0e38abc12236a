"""Simulated agents (and users) shared by the demo, the benchmarks and the tests.

``run_workload`` streams agent replies into a store (``WorkloadConfig``, ``WorkloadResult``,
``StreamStats``); ``run_users`` sends bursts of user input through a dispatcher to
``toy_agent`` (``UserConfig``, ``UserResult``). Built on the public store API only.
"""

from ._users import UserConfig, UserResult, run_users, toy_agent
from ._workload import StreamStats, WorkloadConfig, WorkloadResult, run_workload

__all__ = [
    "StreamStats",
    "UserConfig",
    "UserResult",
    "WorkloadConfig",
    "WorkloadResult",
    "run_users",
    "run_workload",
    "toy_agent",
]
