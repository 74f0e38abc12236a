"""create() and a terminal update() on an otherwise idle store: ``python -m bench.latency``.

One message at a time: ``create()``, then one text delta and its finish in a terminal
``update()`` (written and announced before it returns). Prints p50 and p99 of each over
``--count`` messages (default 400), on a scratch SQLite file or ``--url``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.stats import percentiles
from messagestore import FinishReason, Role, open_store


async def measure(url: str, count: int) -> tuple[list[float], list[float]]:
    creates: list[float] = []
    terminals: list[float] = []
    async with open_store(url) as store:
        session = await store.sessions.create("latency")
        for _ in range(count):
            before = time.perf_counter()
            message = await store.messages.create(session.id, role=Role.ASSISTANT)
            created = time.perf_counter()
            message.append_text("x")
            message.add_finish(FinishReason.END_TURN)
            await store.messages.update(message)
            creates.append(created - before)
            terminals.append(time.perf_counter() - created)
    return creates, terminals


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--url", default=None, help="database URL (default: a scratch SQLite)")
    parser.add_argument("--count", type=int, default=400, help="messages (default 400)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite+aiosqlite:///{Path(folder) / 'latency.db'}"
        creates, terminals = asyncio.run(measure(url, args.count))
    for name, samples in (("create()", creates), ("terminal update()", terminals)):
        p50, p99 = percentiles(samples, (50, 99))
        assert p50 is not None and p99 is not None
        print(f"{name:18} p50 {p50 * 1e3:6.3f} ms   p99 {p99 * 1e3:6.3f} ms   ({len(samples)})")


if __name__ == "__main__":
    main()
