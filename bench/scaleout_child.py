"""The child processes of ``python -m bench.scaleout``: one writer, or a group of SSE clients.

``python -m bench.scaleout_child write URL OUT STREAMS RATE DEBOUNCE SEED``: opens its own store
on the shared database and prints ``ready``; on a ``go`` line on stdin it runs the write
benchmark's load (``run_workload``: pure text replies of 20 to 80 deltas, each finished and
followed by the next turn's prompt and reply, the first creates before the clock) and prints
``streaming`` at its first tick; on a ``stop`` line every open reply gets its finish and the
process writes OUT::

    {"commits": [[revision, t], ...],        # every row of every write-path commit
     "transactions": [[t, rows, seconds], ...],  # every write-path commit (batch_written)
     "deltas": [[t, accepted so far], ...],  # sampled every 20 ms while streaming
     "stats": {...}}                         # the store's counters at the end

``t`` is ``time.monotonic()`` taken in the commit hook, on the event loop right after the
commit: CLOCK_MONOTONIC on Linux, one clock for every process of the machine, so the parent
can subtract it from a client's receive time.

``python -m bench.scaleout_child clients HOST PORT COUNT OUT``: opens COUNT HTTP/1.1
connections to ``GET /api/events`` (every session), prints ``ready`` once each has its first
bytes, records ``(revision, time.monotonic())`` for every event each connection receives
(the message's revision: the last field of a whole frame's ``data:`` JSON, the field after
``base`` in a delta frame's), and on a ``stop`` line
writes ``{"received": [[[revision, t], ...] per connection]}`` to OUT.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The revision of a whole frame (the last field of the message JSON) or of a delta frame
# (right after its base).
_REVISION = re.compile(rb'"revision":(\d+)\}\n|"base":\d+,"revision":(\d+)')
_SAMPLE_EVERY = 0.02
_ENDLESS = 1e9


async def _line() -> str:
    """The next line of stdin (read on a thread: the loop keeps running)."""
    return await asyncio.to_thread(sys.stdin.readline)


# -- a writer ------------------------------------------------------------------------------


async def write(url: str, streams: int, rate: float, debounce: float, seed: int) -> dict[str, Any]:
    from messagestore import batch_written, open_store
    from messagestore._demo import StreamStats, WorkloadConfig, run_workload

    commits: list[tuple[int, float]] = []
    transactions: list[tuple[float, int, float]] = []
    deltas: list[tuple[float, int]] = []

    def on_batch(_sender: object, **kw: Any) -> None:
        transactions.append((time.monotonic(), kw["rows"], kw["seconds"]))

    batch_written.connect(on_batch)
    async with open_store(url, debounce=debounce) as store:
        repository = store._repository
        real = repository.write_messages

        def traced(batch: Sequence[Any], on_commit: Any, **kw: Any) -> Any:
            def hook(result: Any, taken: Any, *recorded: Any) -> None:
                now = time.monotonic()
                commits.extend((revision, now) for revision in result.revisions.values())
                on_commit(result, taken, *recorded)

            return real(batch, hook, **kw)

        repository.write_messages = traced  # type: ignore[method-assign,assignment]
        print("ready", flush=True)
        if (await _line()).strip() != "go":
            raise SystemExit("expected 'go'")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        stopping = loop.create_task(_line())
        stopping.add_done_callback(lambda _: stop.set())
        last = [0.0]

        def on_tick(stats: StreamStats) -> None:
            now = time.monotonic()
            if not deltas:
                print("streaming", flush=True)
            if now - last[0] >= _SAMPLE_EVERY:
                last[0] = now
                deltas.append((now, stats.deltas))

        config = WorkloadConfig(
            streams=streams,
            duration=_ENDLESS,
            rate=rate,
            tool_call_probability=0.0,
            reasoning=False,
            seed=seed,
            warm_up=True,
        )
        result = await run_workload(store, config, stop=stop, on_tick=on_tick)
        deltas.append((time.monotonic(), result.stats.deltas))
        await store.messages.flush_all()
        stats = store.messages.stats()
        await stopping
    batch_written.disconnect(on_batch)
    return {
        "commits": commits,
        "transactions": transactions,
        "deltas": deltas,
        "stats": {
            "updates_accepted": stats.updates_accepted,
            "transactions": stats.transactions,
            "rows_written": stats.rows_written,
            "bytes_written": stats.bytes_written,
            "messages_created": result.stats.messages_created,
            "messages_finished": result.stats.messages_finished,
        },
    }


# -- SSE clients ------------------------------------------------------------------------------


class _Connection:
    """One ``GET /api/events`` over a raw socket: HTTP/1.1, the body read as it comes (chunk
    framing never splits an event: the server writes whole frames per chunk)."""

    def __init__(self) -> None:
        self.received: list[tuple[int, float]] = []
        self.ready = asyncio.Event()
        self.failure: str | None = None

    async def run(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                self.failure = head.split(b"\r\n", 1)[0].decode(errors="replace")
                self.ready.set()
                return
            tail = b""
            received = self.received
            while True:
                chunk = await reader.read(262144)
                if not chunk:
                    return
                now = time.monotonic()
                self.ready.set()
                data = tail + chunk
                for match in _REVISION.finditer(data):
                    received.append((int(match.group(1) or match.group(2)), now))
                cut = data.rfind(b"\n")
                tail = data[cut + 1 :] if cut >= 0 else data
        finally:
            writer.close()


async def clients(host: str, port: int, count: int) -> dict[str, Any]:
    pool = [_Connection() for _ in range(count)]
    tasks = [asyncio.create_task(c.run(host, port)) for c in pool]
    try:
        async with asyncio.timeout(60):
            for connection in pool:
                await connection.ready.wait()
        failures = [c.failure for c in pool if c.failure]
        if failures:
            raise SystemExit(f"{len(failures)} connection(s) refused: {failures[0]}")
        print("ready", flush=True)
        await _line()  # "stop"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"received": [c.received for c in pool]}


def main(argv: Sequence[str]) -> None:
    mode, *rest = argv
    if mode == "write":
        url, out, streams, rate, debounce, seed = rest
        result = asyncio.run(write(url, int(streams), float(rate), float(debounce), int(seed)))
    elif mode == "clients":
        host, port, count, out = rest
        result = asyncio.run(clients(host, int(port), int(count)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
