"""The change-feed benchmark: ``python -m bench.feed`` (run from the repository root).

Four measurements (``--sections``), each on a fresh database (a new SQLite file, or a new
PostgreSQL database next to the one ``--url`` names), medians over ``--repeats``:

0. **Reader cost** (``reader``). Store W appends 16 characters to each of 100 messages of
   1 KB, or of 64 KB, and commits (one tick); store R, with a subscriber, reads the tick from
   the database and the subscriber takes every event; the process's CPU time meanwhile (W is
   idle), per change, over 40 ticks (the first, where R reads each message whole once, not
   counted). Target: 64 KB within 1.5x of 1 KB.
1. **Cross-process delivery latency** (``latency``). Process B subscribes (``bench.feed_child
   subscribe``); process A streams S text streams at R deltas/s for T seconds (the write
   benchmark's load) and notes the time of every group commit in its commit hook; B notes when
   each event arrives. Latency = arrival in B - commit in A, per revision B received (a slow B
   may merge intermediate states: ``delivered`` says how many of the committed row states
   arrived; ``final`` how many messages' stored states B received, which must be all). Targets
   at 20 deltas/s: p99 <= 40 ms at 100 streams, <= 100 ms at 1,000.
2. **Replay speed** (``replay``). ``subscribe(since=0)`` over N changes (N messages written
   straight into the tables with the store's own row encoding, one revision each): events per
   second until the last one arrives, in a fresh store.
3. **Write-path overhead** (``overhead``) of a subscriber, in one process, the three setups
   side by side in interleaved blocks: no subscriber; a plain broker subscriber
   (``store.messages._broker.subscribe()``, what existed before the feed); a feed subscriber
   (``store.messages.subscribe()``, its feed running: on SQLite the counter poll every 25 ms).
   Measured: a group commit (``flush_all()`` of 100 pending messages) and an idle
   ``update()`` (buffered, no write). The subscriber takes its events between the timed
   rounds, so what is timed is what the writer pays: announcing and publishing. Target: the
   feed adds under 10 % (feed / none).

Output: a table (``--json`` for the figures as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from bench.stats import median_of, percentiles
from bench.write_path import ROOT, _Databases, _positive, _positive_int_list, machine_info
from messagestore import Message, Role, Store, Text, open_store
from messagestore._database._rows import message_values
from messagestore._database._schema import feed_state, messages, sessions
from messagestore._model import utc_now
from pubsub import WouldBlock

__all__ = ["main"]

GROUP_ROWS = 100
ROUNDS_PER_BLOCK = 40
UPDATES_PER_BLOCK = 5000
SETUPS = ("none", "broker", "feed")
SECTIONS = ("reader", "latency", "replay", "overhead")
READER_SIZES = (1024, 65536)
READER_STREAMS = 100
READER_TICKS = 40
TARGET_P99_MS = {100: 40.0, 1000: 100.0}
"""Cross-process p99 targets by stream count (20 deltas/s per stream)."""
READER_TARGET = 1.5
"""Reader cost per change of a 64 KB message: at most this times a 1 KB message's."""


# -- 1. cross-process delivery ---------------------------------------------------------------


def _child(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.feed_child", *args],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        text=True,
    )


def latency_cell(
    url: str, streams: int, duration: float, rate: float, debounce: float
) -> dict[str, Any]:
    """One run of the cross-process cell; the figures in milliseconds."""
    asyncio.run(_migrate(url))
    with tempfile.TemporaryDirectory(prefix="msbench-feed-") as scratch:
        received_path, commits_path = Path(scratch) / "b.json", Path(scratch) / "a.json"
        subscriber = _child("subscribe", url, str(received_path), stdin=subprocess.PIPE)
        try:
            assert subscriber.stdout is not None and subscriber.stdin is not None
            if subscriber.stdout.readline().strip() != "ready":
                raise RuntimeError("the subscriber process did not start")
            writer = _child(
                "write",
                url,
                str(commits_path),
                str(streams),
                str(duration),
                str(rate),
                str(debounce),
            )
            writer.communicate(timeout=120 + 4 * duration + 0.1 * streams)
            if writer.returncode != 0:
                raise RuntimeError(f"the writer process failed ({writer.returncode})")
            written = json.loads(commits_path.read_text())
            subscriber.stdin.write(f"until {written['counter']}\n")
            subscriber.stdin.close()
            subscriber.wait(timeout=120)
            if subscriber.returncode != 0:
                raise RuntimeError(f"the subscriber process failed ({subscriber.returncode})")
        finally:
            subscriber.kill()
        result = json.loads(received_path.read_text())
    received, last = result["received"], result["last"]
    committed = dict(written["commits"])
    latencies = [(t - committed[rev]) * 1e3 for rev, t in received if rev in committed]
    p50, p99, top = percentiles(latencies, (50, 99, 100))
    stored = asyncio.run(_stored_revisions(url))
    return {
        "streams": streams,
        "committed": len(committed),
        "delivered": len(latencies),
        "messages": len(stored),
        "final_delivered": sum(1 for i, rev in stored.items() if last.get(i) == rev),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": top,
    }


async def _migrate(url: str) -> None:
    async with open_store(url):
        pass


async def _stored_revisions(url: str) -> dict[str, int]:
    """Every message's stored revision (what a subscriber must end on)."""
    async with open_store(url) as store:
        snapshot = await store.messages.snapshot()
    return {m.id: m.revision for m in snapshot.messages}


# -- 1b. reader cost per change ----------------------------------------------------------------


async def _reader_cost(url: str, streams: int, size: int, ticks: int) -> dict[str, Any]:
    """CPU time of reading one tick of another store's appends, per change.

    Store W appends 16 characters to each of STREAMS messages of SIZE characters and commits
    (one tick); then the clock runs while store R's feed (a subscriber attached) reads the
    tick and its subscriber takes every event, until it holds W's newest revision. W is idle
    meanwhile, so the process's CPU time is R's: the read job, publishing, the subscriber.
    The first tick, where R reads each message whole once, is not counted."""
    async with open_store(url) as reader, open_store(url, debounce=3600) as writer:
        session = await writer.sessions.create("reader cost")
        messages = [
            await writer.messages.create(
                session.id, role=Role.ASSISTANT, parts=[Text("x" * size)], model="m"
            )
            for _ in range(streams)
        ]
        sub = reader.messages.subscribe(buffer_size=4 * streams)
        await reader._feed.activated()
        cpu: list[float] = []
        received = 0
        for tick in range(ticks + 1):
            for message in messages:
                message.append_text(f"{tick:06d} 9abcdefg ")
                await writer.messages.update(message)
            await writer.messages.flush_all()
            newest, _ = await writer._repository.read_counter()
            started = time.process_time()
            while True:
                event = await asyncio.wait_for(sub.receive(), 60)
                received += tick > 0
                if event.payload.revision >= newest:
                    break
            if tick > 0:
                cpu.append(time.process_time() - started)
        sub.close()
    return {
        "size": size,
        "changes": streams * ticks,
        "received": received,
        "cpu_us_per_change": sum(cpu) / (streams * ticks) * 1e6,
    }


def reader_cell(url: str, streams: int, size: int, ticks: int) -> dict[str, Any]:
    return asyncio.run(_reader_cost(url, streams, size, ticks))


# -- 2. replay ---------------------------------------------------------------------------------


async def _fill(url: str, changes: int) -> None:
    """``changes`` messages of one session, one revision each, written straight into the
    tables (creating them one by one through the store would take minutes)."""
    async with open_store(url) as store:
        session = await store.sessions.create("replay")
        now = utc_now()
        text = "lorem ipsum dolor sit amet " * 8
        first = session.revision + 1
        async with store.engine.begin() as conn:
            for start in range(0, changes, 5000):
                rows = []
                for n in range(start, min(start + 5000, changes)):
                    message = Message(
                        f"replay-{n:07d}",
                        session.id,
                        Role.USER,
                        [Text(f"{n} {text}")],
                        created_at=now,
                        updated_at=now,
                    )
                    message.revision = first + n
                    rows.append(message_values(message, None))
                await conn.execute(insert(messages), rows)
            last = first + changes - 1
            await conn.execute(update(sessions).values(message_count=changes))
            await conn.execute(update(feed_state).values(revision=last))


async def _replay_once(url: str, changes: int) -> float:
    async with open_store(url) as store:
        sub = store.messages.subscribe(since=0)
        started = time.perf_counter()
        for _ in range(changes):
            await sub.receive()
        elapsed = time.perf_counter() - started
        sub.close()
    return changes / elapsed


def replay_runs(url: str, changes: int, repeats: int) -> list[float]:
    asyncio.run(_fill(url, changes))
    return [asyncio.run(_replay_once(url, changes)) for _ in range(repeats)]


# -- 3. write-path overhead ---------------------------------------------------------------------


def _drain(sub: Any) -> None:
    """Take what the subscriber holds (untimed, between measured rounds)."""
    with contextlib.suppress(WouldBlock):
        while sub.pending:
            sub.receive_nowait()


async def _with_setup(
    store: Store, setup: str, body: Callable[[Callable[[], None]], Awaitable[list[float]]]
) -> list[float]:
    """Run ``body`` with the setup's subscriber attached; ``body`` calls the drain it is given
    between timed rounds, so only the publishing side is timed."""
    if setup == "none":
        return await body(lambda: None)
    sub: Any = (
        store.messages._broker.subscribe(buffer_size=4 * GROUP_ROWS)
        if setup == "broker"
        else store.messages.subscribe(buffer_size=4 * GROUP_ROWS)
    )
    try:
        if setup == "feed":
            await store._feed.activated()
        return await body(lambda: _drain(sub))
    finally:
        sub.close()


async def _overhead(url: str, blocks: int) -> dict[str, dict[str, float | None]]:
    group: dict[str, list[float]] = {s: [] for s in SETUPS}
    idle: dict[str, list[float]] = {s: [] for s in SETUPS}
    async with open_store(url, debounce=3600) as store:  # no timer: only flush_all() writes
        session = await store.sessions.create("overhead")
        batch = [
            await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(GROUP_ROWS)
        ]

        async def group_commits(drain: Callable[[], None]) -> list[float]:
            samples = []
            for n in range(ROUNDS_PER_BLOCK):
                for message in batch:
                    message.append_text(f"t{n} ")
                    await store.messages.update(message)
                started = time.perf_counter()
                await store.messages.flush_all()
                samples.append((time.perf_counter() - started) * 1e3)
                drain()
            return samples

        async def idle_updates(drain: Callable[[], None]) -> list[float]:
            message = await store.messages.create(session.id, role=Role.ASSISTANT)
            started = time.perf_counter()
            for _ in range(UPDATES_PER_BLOCK):
                message.append_text("x")
                await store.messages.update(message)
            per_call = (time.perf_counter() - started) / UPDATES_PER_BLOCK * 1e6
            await store.messages.flush_all()
            drain()
            return [per_call]

        for block in range(blocks):  # the order turns each block: no setup always goes first
            for setup in SETUPS[block % 3 :] + SETUPS[: block % 3]:
                group[setup] += await _with_setup(store, setup, group_commits)
                idle[setup] += await _with_setup(store, setup, idle_updates)
    return {
        "group_commit_ms": {s: statistics.median(group[s]) for s in SETUPS},
        "idle_update_us": {s: statistics.median(idle[s]) for s in SETUPS},
    }


# -- the run --------------------------------------------------------------------------------------


def run(options: argparse.Namespace) -> dict[str, Any]:
    databases = _Databases(options.url)
    machine = machine_info()
    report: dict[str, Any] = {
        "machine": machine,
        "backend": databases.backend,
        "options": {
            "streams": list(options.streams),
            "duration": options.duration,
            "rate": options.rate,
            "debounce": options.debounce,
            "changes": options.changes,
            "repeats": options.repeats,
            "blocks": options.blocks,
        },
    }
    sections = set(options.sections)
    report["options"]["sections"] = [name for name in SECTIONS if name in sections]
    try:
        if "reader" in sections:
            report["reader"] = _reader_cells(databases, options)
        if "latency" in sections:
            report["latency"] = _latency_cells(databases, options)
        if "replay" in sections:
            _progress(f"replay of {options.changes:,} changes")
            with databases.fresh("replay") as url:
                rates = replay_runs(url, options.changes, options.repeats)
            report["replay_events_per_s"] = statistics.median(rates)
            report["replay_runs"] = rates
        if "overhead" in sections:
            overhead_runs = []
            for repeat in range(options.repeats):
                _progress(f"write-path overhead run {repeat + 1}")
                with databases.fresh("overhead") as url:
                    overhead_runs.append(asyncio.run(_overhead(url, options.blocks)))
            report["overhead"] = {
                measure: {s: median_of(r[measure][s] for r in overhead_runs) for s in SETUPS}
                for measure in ("group_commit_ms", "idle_update_us")
            }
    finally:
        databases.close()
        report["machine"]["load_average_after"] = list(os.getloadavg())
    return report


def _latency_cells(databases: _Databases, options: argparse.Namespace) -> list[dict[str, Any]]:
    cells = []
    for streams in options.streams:
        runs = []
        for repeat in range(options.repeats):
            _progress(f"latency S={streams} run {repeat + 1}")
            with databases.fresh(f"latency-{streams}") as url:
                runs.append(
                    latency_cell(url, streams, options.duration, options.rate, options.debounce)
                )
        cells.append(
            {
                key: median_of(r[key] for r in runs) if key != "streams" else streams
                for key in runs[0]
            }
        )
    return cells


def _reader_cells(databases: _Databases, options: argparse.Namespace) -> list[dict[str, Any]]:
    """The reader-cost cells, the sizes alternated run by run (medians over the runs)."""
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in READER_SIZES}
    for repeat in range(options.repeats):
        for size in READER_SIZES if repeat % 2 == 0 else READER_SIZES[::-1]:
            _progress(f"reader cost, {size:,}-character messages, run {repeat + 1}")
            with databases.fresh(f"reader-{size}") as url:
                runs[size].append(reader_cell(url, READER_STREAMS, size, READER_TICKS))
    return [
        {
            key: median_of(r[key] for r in runs[size]) if key != "size" else size
            for key in runs[size][0]
        }
        for size in READER_SIZES
    ]


def _progress(message: str) -> None:
    print(f"[bench.feed] {message}", file=sys.stderr, flush=True)


def render(report: dict[str, Any]) -> str:
    machine, options = report["machine"], report["options"]
    debounce_ms = options["debounce"] * 1e3
    before = "/".join(f"{x:.1f}" for x in machine["load_average"])
    after = "/".join(f"{x:.1f}" for x in machine["load_average_after"])
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"{machine['date']}, load average {before} -> {after}, "
        f"sum(range(1000)) takes {machine['calibration_us']:.1f} us, commit {machine['commit']}",
        f"backend: {report['backend']}; medians of {options['repeats']} run(s)",
    ]
    if "reader" in report:
        lines += [
            "",
            f"Reader cost: CPU time of a store's feed reading another store's commits and its "
            f"subscriber taking them, per change: {READER_TICKS} ticks, each appending 16 "
            f"characters to each of {READER_STREAMS} messages; target: 64 KB within "
            f"{READER_TARGET:g}x of 1 KB",
            "",
            "| message size | changes | events received | CPU us per change |",
            "|-------------:|--------:|----------------:|------------------:|",
        ]
        for cell in report["reader"]:
            lines.append(
                f"| {cell['size']:,} | {_count(cell['changes'])} | {_count(cell['received'])} | "
                f"{_num(cell['cpu_us_per_change'])} |"
            )
        small, large = (c["cpu_us_per_change"] for c in report["reader"])
        if small and large:
            ratio = large / small
            verdict = "met" if ratio <= READER_TARGET else "MISSED"
            lines.append(f"\n64 KB / 1 KB: {ratio:.2f} ({verdict})")
    if "latency" in report:
        lines += [
            "",
            f"Cross-process delivery (commit in process A -> event in process B), "
            f"{options['rate']:g} deltas/s per stream for {options['duration']:g} s, "
            f"debounce {debounce_ms:g} ms; final: messages whose stored state B received",
            "",
            "| streams | row states committed | delivered | final | p50 ms | p99 ms | max ms "
            "| p99 target |",
            "|--------:|---------------------:|----------:|------:|-------:|-------:|-------:"
            "|:-----------|",
        ]
        for cell in report["latency"]:
            target = TARGET_P99_MS.get(cell["streams"])
            if target is None:
                verdict = "-"
            else:
                met = cell["p99_ms"] is not None and cell["p99_ms"] <= target
                verdict = f"<= {target:g}: {'met' if met else 'MISSED'}"
            lines.append(
                f"| {cell['streams']:,} | {_count(cell['committed'])} | "
                f"{_count(cell['delivered'])} | "
                f"{_count(cell['final_delivered'])}/{_count(cell['messages'])} | "
                f"{_num(cell['p50_ms'])} | {_num(cell['p99_ms'])} | {_num(cell['max_ms'])} | "
                f"{verdict} |"
            )
    if "replay_events_per_s" in report:
        lines += [
            "",
            f"Replay: subscribe(since=0) over {options['changes']:,} changes: "
            f"{report['replay_events_per_s']:,.0f} events/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in report['replay_runs'])})",
        ]
    if "overhead" in report:
        lines += [
            "",
            "Write-path overhead of one subscriber (same process, interleaved blocks); "
            "target: feed / none < 1.10",
            "",
            "| measure | none | broker subscriber | feed subscriber | feed / none "
            "| feed / broker |",
            "|---------|-----:|------------------:|----------------:|------------:"
            "|--------------:|",
        ]
        names = {
            "group_commit_ms": f"group commit of {GROUP_ROWS} rows, ms",
            "idle_update_us": "idle update(), us",
        }
        for measure, label in names.items():
            figures = report["overhead"][measure]
            lines.append(
                f"| {label} | {_num(figures['none'])} | {_num(figures['broker'])} | "
                f"{_num(figures['feed'])} | {figures['feed'] / figures['none']:.2f} | "
                f"{figures['feed'] / figures['broker']:.2f} |"
            )
    return "\n".join(lines)


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.feed",
        description="The change-feed benchmark (see the module docstring).",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="database: SQLite (default: a temporary folder) or a PostgreSQL URL "
        "(scratch databases are created next to it)",
    )
    parser.add_argument(
        "--streams",
        type=_positive_int_list,
        default=(1, 100, 1000),
        help="stream counts for the latency cells (default 1,100,1000)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=20.0,
        help="deltas per second per stream (default 20)",
    )
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=5.0,
        help="seconds of streaming per latency cell (default 5)",
    )
    parser.add_argument(
        "--debounce",
        type=_positive(float),
        default=0.033,
        help="the writer's debounce in seconds (default 0.033)",
    )
    parser.add_argument(
        "--changes", type=_positive(int), default=100_000, help="changes to replay (default 100000)"
    )
    parser.add_argument(
        "--repeats",
        type=_positive(int),
        default=3,
        help="runs per measurement; medians are reported (default 3)",
    )
    parser.add_argument(
        "--blocks",
        type=_positive(int),
        default=6,
        help="overhead blocks per run, each setup once per block (default 6)",
    )
    parser.add_argument(
        "--sections",
        type=_sections,
        default=SECTIONS,
        help=f"which measurements, comma-separated (default {','.join(SECTIONS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"sections are a comma-separated choice of {', '.join(SECTIONS)}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    report = run(options)
    print(json.dumps(report, indent=2) if options.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
