"""Benchmark of the dispatcher: ``python -m bench.dispatch`` (prints figures; no assertions).

Two parts, each on a fresh database (a SQLite file, or with ``--url postgresql+asyncpg://...``
a scratch PostgreSQL database created next to the one named and dropped afterwards):

1. **The cost of ``submit``.** ``--submits`` inputs one after another, spread over 100
   sessions, through ``Dispatcher.submit`` (one transaction: lock the session's dispatcher row,
   count what is pending for the cap, insert the input) against the same number of bare
   ``INSERT``s of the same row, one per transaction, through the same engine. Mean, p50 and
   p99 per call in microseconds.

2. **Load.** ``--sessions`` users, each sending bursts of 1 to 3 inputs 20 to 80 ms apart,
   then pausing ``--pause`` seconds (uniform), for ``--duration`` seconds, into one running
   ``Dispatcher`` whose toy agent streams a five-word reply per turn (``reply()``, five
   ``update()``) and returns: the reply is created in the turn's start transaction
   (``ReplyConfig``) and finished in its end transaction, two write transactions per turn
   (``--classic``: the agent creates and finishes its reply itself, four). Figures:
   inputs/s and turns/s over the run (and whether everything offered was run by the end,
   plus how long the backlog took to drain), inputs coalesced,
   the latency from ``submit`` returning (committed) to the turn's start for every input
   (p50/p99), and the delay *beyond the configured window* for turns of idle sessions:
   turn start - (newest input's commit + window), p50/p99. Event-loop lag and the load
   average are printed alongside: on a loaded machine every figure is worse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert

from bench.stats import percentile
from bench.write_path import _Databases
from messagestore import FinishReason, Store, open_store
from messagestore._dispatch._tables import dispatch_inputs
from messagestore._model import utc_now
from messagestore.dispatch import Dispatcher, QueueConfig, ReplyConfig, Turn

__all__ = ["main"]


# -- part 1: submit against a bare insert ---------------------------------------------------------


async def submit_cost(url: str, count: int) -> dict[str, Any]:
    async with open_store(url) as store:
        sessions = [(await store.sessions.create(f"s{i}")).id for i in range(100)]
        dispatcher = Dispatcher(store, _never, QueueConfig(cap=1_000_000))
        for n in range(50):  # warm up both paths (connections, statement caches)
            await dispatcher.submit(sessions[n % 100], "warm up")
            await _bare_insert(store, sessions[n % 100])
        submit: list[float] = []
        bare: list[float] = []
        for n in range(count):
            session_id = sessions[n % 100]
            started = time.perf_counter()
            await dispatcher.submit(session_id, f"message {n}")
            submit.append(time.perf_counter() - started)
            started = time.perf_counter()
            await _bare_insert(store, session_id)
            bare.append(time.perf_counter() - started)
    return {"count": count, "submit_us": _summary(submit), "bare_insert_us": _summary(bare)}


async def _bare_insert(store: Store, session_id: str) -> None:
    payload = json.dumps({"text": "message", "metadata": None})
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(dispatch_inputs).values(
                id=os.urandom(16).hex(),
                session_id=session_id,
                payload=payload,
                state="bench",  # never picked up as pending
                created_at=utc_now(),
            )
        )


async def _never(turn: Turn) -> None:
    raise AssertionError("not started")


def _summary(seconds: list[float]) -> dict[str, float]:
    us = [s * 1e6 for s in seconds]
    return {
        "mean": round(statistics.fmean(us), 1),
        "p50": round(percentile(us, 50) or 0.0, 1),
        "p99": round(percentile(us, 99) or 0.0, 1),
    }


# -- part 2: load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """What the load run observed (loop times in seconds)."""

    window: float
    committed: dict[str, float] = field(default_factory=dict)  # input id -> submit returned
    latencies: list[float] = field(default_factory=list)
    beyond_window: list[float] = field(default_factory=list)
    turns: int = 0
    inputs_run: int = 0
    last_end: dict[str, float] = field(default_factory=dict)  # session -> previous turn's end
    lag: list[float] = field(default_factory=list)


def toy_agent(load: Load, *, classic: bool = False) -> Any:
    async def run_turn(turn: Turn) -> None:
        now = asyncio.get_running_loop().time()
        submitted = [load.committed.get(i.id) for i in turn.inputs]
        known = [t for t in submitted if t is not None]
        load.turns += 1
        load.inputs_run += len(turn.inputs)
        load.latencies.extend(now - t for t in known)
        previous = load.last_end.get(turn.session_id, float("-inf"))
        if known and len(known) == len(submitted) and min(known) > previous:
            load.beyond_window.append(now - (max(known) + load.window))
        reply = await turn.reply(model="toy")
        for word in ("one", "two", "three", "four", "five"):
            reply.append_text(word + " ")
            await turn.store.messages.update(reply)
        if classic:  # else the dispatcher adds END_TURN in the turn's end transaction
            reply.add_finish(FinishReason.END_TURN)
            await turn.store.messages.update(reply)
        load.last_end[turn.session_id] = asyncio.get_running_loop().time()

    return run_turn


async def load_run(
    url: str,
    sessions: int,
    duration: float,
    pause: tuple[float, float],
    window: float,
    seed: int,
    *,
    classic: bool = False,
) -> dict[str, Any]:
    load = Load(window)
    reply = None if classic else ReplyConfig(model="toy")
    config = QueueConfig(debounce=window, max_wait=max(1.0, window * 10), cap=100)
    rng = random.Random(seed)
    async with open_store(url) as store:
        ids = [(await store.sessions.create(f"user {i}")).id for i in range(sessions)]
        loop = asyncio.get_running_loop()
        receipts = []
        agent = toy_agent(load, classic=classic)
        async with Dispatcher(store, agent, config, reply=reply) as dispatcher:
            started = loop.time()
            deadline = started + duration
            lagger = asyncio.create_task(_watch_lag(load, deadline))

            async def user(session_id: str, rng: random.Random) -> None:
                wait = rng.uniform(0, min(pause[1], duration))
                while loop.time() + wait < deadline:
                    await asyncio.sleep(wait)
                    for _ in range(rng.randint(1, 3)):
                        receipt = await dispatcher.submit(session_id, "do the next thing")
                        load.committed[receipt.id] = loop.time()
                        receipts.append(receipt)
                        await asyncio.sleep(rng.uniform(0.02, 0.08))
                    wait = rng.uniform(*pause)

            await asyncio.gather(*(user(s, random.Random(rng.random())) for s in ids))
            submitting = loop.time() - started
            ran_in_window = load.inputs_run
            turns_in_window = load.turns
            backlog = len(receipts) - ran_in_window
            async with asyncio.timeout(300):
                outcomes = [str(await r.outcome()) for r in receipts]
            drained = loop.time() - started
            await lagger
            stats = dispatcher.stats()
    q = {str(p): percentile(load.latencies, p) for p in (50, 99)}
    b = {str(p): percentile(load.beyond_window, p) for p in (50, 99)}
    return {
        "agent": "classic" if classic else "two transactions",
        "sessions": sessions,
        "duration_s": round(submitting, 2),
        "window_ms": window * 1000,
        "pause_s": list(pause),
        "inputs": len(receipts),
        "turns": stats.turns_started,
        "inputs_coalesced": stats.inputs_coalesced,
        "inputs_per_s": round(ran_in_window / submitting, 1),
        "turns_per_s": round(turns_in_window / submitting, 1),
        "offered_inputs_per_s": round(len(receipts) / submitting, 1),
        "backlog_at_end": backlog,
        "drained_after_s": round(drained - submitting, 2),
        "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
        "latency_ms": {k: _ms(v) for k, v in q.items()},
        "beyond_window_ms": {k: _ms(v) for k, v in b.items()} | {"turns": len(load.beyond_window)},
        "loop_lag_ms": {
            "p50": _ms(percentile(load.lag, 50)),
            "p99": _ms(percentile(load.lag, 99)),
        },
        "start_conflicts": stats.start_conflicts,
        "polls": stats.polls,
    }


async def _watch_lag(load: Load, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        before = loop.time()
        await asyncio.sleep(0.05)
        load.lag.append(loop.time() - before - 0.05)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__)
    parser.add_argument("--url", default=None, help="database (default: a temporary SQLite file)")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--pause", default="5,15", help="seconds between bursts: MIN,MAX")
    parser.add_argument("--window", type=float, default=0.05, help="coalescing window (s)")
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument(
        "--classic",
        action="store_true",
        help="the agent creates and finishes its reply itself (four transactions a turn)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    low, high = (float(x) for x in args.pause.split(","))
    databases = _Databases(args.url)
    report: dict[str, Any] = {
        "backend": databases.backend,
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    try:
        with databases.fresh("submit") as url:
            report["submit"] = asyncio.run(submit_cost(url, args.submits))
        if not args.skip_load:
            with databases.fresh("load") as url:
                report["load"] = asyncio.run(
                    load_run(
                        url,
                        args.sessions,
                        args.duration,
                        (low, high),
                        args.window,
                        args.seed,
                        classic=args.classic,
                    )
                )
    finally:
        databases.close()
    report["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    print(f"dispatcher benchmark on {report['backend']} (load average {report['load_average']})")
    s = report["submit"]
    print(f"  submit vs bare insert, {s['count']} calls each, one transaction per call:")
    for name, key in (("submit", "submit_us"), ("bare insert", "bare_insert_us")):
        f = s[key]
        print(
            f"    {name:<12} mean {f['mean']:8.1f} us  p50 {f['p50']:8.1f} us  "
            f"p99 {f['p99']:8.1f} us"
        )
    load = report.get("load")
    if load:
        lat, beyond, lag = load["latency_ms"], load["beyond_window_ms"], load["loop_lag_ms"]
        print(
            f"  load ({load['agent']} agent): {load['sessions']} sessions for "
            f"{load['duration_s']} s, window "
            f"{load['window_ms']:g} ms, pauses {load['pause_s']} s"
        )
        print(
            f"    offered {load['offered_inputs_per_s']} inputs/s; ran {load['inputs_per_s']} "
            f"inputs/s in {load['turns_per_s']} turns/s ({load['inputs_coalesced']} coalesced)"
        )
        print(
            f"    backlog at the end {load['backlog_at_end']}, drained after "
            f"{load['drained_after_s']} s; outcomes {load['outcomes']}"
        )
        print(f"    submit -> turn start p50 {lat['50']} ms, p99 {lat['99']} ms")
        print(
            f"    beyond the window p50 {beyond['50']} ms, p99 {beyond['99']} ms "
            f"({beyond['turns']} turns of idle sessions)"
        )
        print(f"    event-loop lag p50 {lag['p50']} ms, p99 {lag['p99']} ms")
    print(f"  load average after: {report['load_average_after']}")


if __name__ == "__main__":
    sys.exit(main())
