"""The two processes of the cross-process latency cell of ``python -m bench.feed``.

``python -m bench.feed_child subscribe URL OUT``: opens a store, subscribes to every message
(``store.messages.subscribe()``), prints ``ready`` once its feed has read the revision counter,
then records ``(revision, time.monotonic())`` for every event it receives (what is buffered is
taken without waiting) and the newest revision it received of each message. A line
``until REV`` on stdin makes it stop once its ``Subscription.revision`` reaches ``REV``; it then
writes ``{"received": [[revision, t], ...], "last": {message id: revision}}`` to OUT.

``python -m bench.feed_child write URL OUT STREAMS DURATION RATE DEBOUNCE``: opens a store and
runs the write benchmark's load (``run_workload``: pure text streams, opening creates before
the clock), recording ``(revision, time.monotonic())`` for every row of every group commit in
its commit hook (on the event loop, right after the commit); writes
``{"commits": [[revision, t], ...], "counter": newest revision}`` to OUT.

``time.monotonic()`` is CLOCK_MONOTONIC on Linux: one clock for every process of the machine,
so the parent can subtract the writer's commit time from the subscriber's receive time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from messagestore import open_store
from messagestore._demo import WorkloadConfig, run_workload
from pubsub import WouldBlock

_ENDLESS_REPLY = (10**9, 10**9)


async def subscribe(url: str) -> dict[str, Any]:
    received: list[tuple[int, float]] = []
    last: dict[str, int] = {}
    until: list[int | None] = [None]

    def read_stdin() -> None:
        line = sys.stdin.readline()
        until[0] = int(line.split()[1]) if line.startswith("until ") else 0

    async with open_store(url) as store:
        sub = store.messages.subscribe()

        async def one() -> tuple[int, float]:
            event = await sub.receive()
            last[event.payload.id] = event.payload.revision
            return event.payload.revision, time.monotonic()

        await store._feed.activated()
        print("ready", flush=True)
        reader = asyncio.ensure_future(asyncio.to_thread(read_stdin))
        receiving: asyncio.Future[tuple[int, float]] | None = None
        while until[0] is None or (sub.revision or 0) < until[0]:
            if receiving is None:  # what is buffered first, without a task per event
                with contextlib.suppress(WouldBlock):
                    while True:
                        event = sub.receive_nowait()
                        last[event.payload.id] = event.payload.revision
                        received.append((event.payload.revision, time.monotonic()))
                receiving = asyncio.ensure_future(one())
            finished, _ = await asyncio.wait([receiving], timeout=0.05)
            if finished:
                received.append(receiving.result())
                receiving = None
        if receiving is not None:
            receiving.cancel()
        await reader
        sub.close()
    return {"received": received, "last": last}


async def write(
    url: str, streams: int, duration: float, rate: float, debounce: float
) -> dict[str, Any]:
    commits: list[tuple[int, float]] = []
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
        config = WorkloadConfig(
            streams=streams,
            duration=duration,
            rate=rate,
            tool_call_probability=0.0,
            reasoning=False,
            reply_tokens=_ENDLESS_REPLY,
            warm_up=True,
        )
        await run_workload(store, config)
        await store.messages.flush_all()
        counter, _ = await repository.read_counter()
    return {"commits": commits, "counter": counter}


def main(argv: Sequence[str]) -> None:
    mode, url, out, *rest = argv
    if mode == "subscribe":
        result = asyncio.run(subscribe(url))
    elif mode == "write":
        streams, duration, rate, debounce = rest
        result = asyncio.run(
            write(url, int(streams), float(duration), float(rate), float(debounce))
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
