"""Reading streaming messages beside many streams: ``python -m bench.reads``.

``--streams`` messages (default 1,000) stream text together: ``--ticks`` group commits
(default 300, about ten seconds of a 33 ms window), each appending a few characters to every
message. Their text is then stored as appends, one append row per tick for all of them
(``messagestore._database._appends``). Then, on the same store:

* ``get()`` of one message and ``list()`` of the session with the read cache emptied before
  every read (what a process that never read these streams pays), and
* the same reads after one more tick each, the cache kept (what a reader that follows the
  streams pays: a feed subscriber, a UI polling a session).

Prints median and max over ``--reads`` reads (default 5) of each, on a scratch SQLite file or
``--url`` (the session is deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from messagestore import Message, Role, Store, open_store


async def _tick(store: Store, streaming: list[Message]) -> None:
    for message in streaming:
        message.append_text("word ")
        await store.messages.update(message)
    await store.messages.flush_all()


async def _timed(read: Callable[[], Awaitable[Any]]) -> float:
    before = time.perf_counter()
    await read()
    return time.perf_counter() - before


async def measure(url: str, streams: int, ticks: int, reads: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    async with open_store(url, debounce=3600) as store:
        session = await store.sessions.create("bench.reads")
        try:
            streaming = [
                await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(streams)
            ]
            started = time.perf_counter()
            for done in range(ticks):
                await _tick(store, streaming)
                if done % 50 == 49:
                    print(f"  {done + 1} ticks, {time.perf_counter() - started:.1f} s", flush=True)
            # Commits before the read cache have none: there every read is a cold one.
            cache = getattr(store._database, "stream_cache", None)
            one = streaming[len(streaming) // 2]

            async def get() -> Any:
                got = await store.messages.get(one.id)
                assert got.text == one.text
                return got

            async def listed() -> Any:
                return await store.messages.list(session.id)

            for name, read in (("get", get), ("list", listed)):
                cold: list[float] = []
                warm: list[float] = []
                for _ in range(reads):
                    if cache is not None:
                        cache.clear()
                    cold.append(await _timed(read))
                await read()  # the cache now holds the streams
                for _ in range(reads):
                    await _tick(store, streaming)
                    warm.append(await _timed(read))
                figures[f"{name}(), cache emptied before each read"] = cold
                figures[f"{name}(), following the streams (one tick since)"] = warm
        finally:
            await store.sessions.delete(session.id)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reads", description=__doc__)
    parser.add_argument("--url", default=None, help="database URL (default: a scratch SQLite)")
    parser.add_argument("--streams", type=int, default=1000, help="streams (default 1000)")
    parser.add_argument("--ticks", type=int, default=300, help="group commits (default 300)")
    parser.add_argument("--reads", type=int, default=5, help="reads per figure (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite+aiosqlite:///{Path(folder) / 'reads.db'}"
        figures = asyncio.run(measure(url, args.streams, args.ticks, args.reads))
    print(f"{args.streams} streams, {args.ticks} ticks of appends; ms over {args.reads} reads")
    for name, samples in figures.items():
        median, worst = statistics.median(samples) * 1e3, max(samples) * 1e3
        print(f"  {name:52} median {median:8.1f}   max {worst:8.1f}")


if __name__ == "__main__":
    main()
