"""``messagestore worker (--agent module:function | --demo [--demo-rate N])``: a dispatcher in a
process of its own, running the turns of input that others (``messagestore serve``, any
``Dispatcher.submit``) commit to the shared database. SIGINT exits 130, SIGTERM 0, however the
process was started: running turns are cancelled, pending input stays for the next worker, the
store closes. Details: docs/MODULES.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from ..dispatch import Dispatcher
from ._common import CliError, Target, connect_check, open_cli_store, stop_on_signals

__all__ = ["EXIT_INTERRUPTED", "add_worker_parser", "load_agent", "run_worker"]

EXIT_INTERRUPTED = 130

RunTurn = Callable[[Any], Awaitable[None]]


def add_worker_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run the agent's turns: a dispatcher in its own process",
        description="Run a dispatcher that runs the agent for the input submitted to the "
        "database (by `messagestore serve`, or any Dispatcher.submit). Any number of workers "
        "share one database. Ctrl-C or SIGTERM cancels the running turns, keeps pending "
        "input and exits (130 after Ctrl-C, 0 after SIGTERM).",
    )
    agent = worker.add_mutually_exclusive_group(required=True)
    agent.add_argument(
        "--agent",
        metavar="MODULE:FUNCTION",
        help="the run_turn coroutine function (async def run_turn(turn)), e.g. myagent:run_turn",
    )
    agent.add_argument(
        "--demo", action="store_true", help="run the simulated agent (no model needed)"
    )
    worker.add_argument(
        "--demo-rate",
        type=float,
        default=20.0,
        metavar="WORDS_PER_S",
        help="words per second the simulated agent streams (default %(default)s)",
    )


def load_agent(spec: str) -> RunTurn:
    """The ``run_turn`` that ``module:function`` names (see the module docstring)."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise CliError(f"--agent must be MODULE:FUNCTION (e.g. myagent:run_turn), not {spec!r}")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"--agent {spec}: cannot import {module_name!r}: {exc}") from exc
    value: Any = module
    for name in attribute.split("."):
        try:
            value = getattr(value, name)
        except AttributeError:
            raise CliError(f"--agent {spec}: {module_name!r} has no {attribute!r}") from None
    if not callable(value):
        raise CliError(f"--agent {spec}: {attribute!r} is not callable")
    if not (
        inspect.iscoroutinefunction(value)
        or inspect.iscoroutinefunction(type(value).__call__)  # an object with async __call__
    ):
        raise CliError(
            f"--agent {spec}: {attribute!r} is not a coroutine function (async def run_turn(turn))"
        )
    agent: RunTurn = value
    return agent


async def run_worker(target: Target, args: argparse.Namespace, err: TextIO) -> int:
    """Run the dispatcher until SIGINT or SIGTERM (see the module docstring)."""
    if args.demo and not args.demo_rate > 0:
        raise CliError(f"--demo-rate must be positive, not {args.demo_rate}")
    agent = None if args.demo else load_agent(args.agent)
    await connect_check(target)
    with stop_on_signals() as received:
        try:
            await _work(target, agent, args.demo_rate, err)
        except asyncio.CancelledError:
            if not received:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
    print("messagestore: worker stopped; pending input stays queued", file=err, flush=True)
    return EXIT_INTERRUPTED if received and received[0] == signal.SIGINT else 0


async def _work(target: Target, agent: RunTurn | None, rate: float, err: TextIO) -> None:
    store = await open_cli_store(target)
    try:
        if agent is None:
            from .._demo import simulated_agent

            agent = simulated_agent(store, rate=rate)
            what = f"the simulated agent, {rate:g} words/s"
        else:
            what = getattr(agent, "__qualname__", repr(agent))
        dispatcher = Dispatcher(store, agent)
        await dispatcher.start()
        try:
            print(
                f"messagestore: worker running {what} on {target.display}; Ctrl-C stops",
                file=err,
                flush=True,
            )
            await asyncio.Event().wait()  # until a signal cancels this task
        finally:
            await dispatcher.close()  # a second signal cuts a stuck close short
    finally:
        await store.close()
