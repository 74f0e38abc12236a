"""Benchmark of the HTTP service's event stream (a script that prints figures, not a test).

Run from the repository root (needs the ``server`` extra)::

    python -m bench.bench_server                 # 1, 100 and 1000 clients, 200 updates/s, 5 s
    python -m bench.bench_server --clients 100 --rate 500 --seconds 10

For each client count: one server process (``create_app`` under uvicorn, on a fresh SQLite file,
``debounce=0`` so every ``update()`` is its own commit and event) and, in this process, that
many SSE clients on raw sockets reading ``/api/events``. A writer in the server process
streams one message at ``--rate`` updates per second. Printed:

* events/s delivered: events received by all clients together, per second of streaming (a
  client that falls behind gets intermediate states merged, so it may receive fewer events
  than were written, never a stale final one);
* latency p50/p99: from the commit (the moment the server process's own change feed announces
  the revision) to the moment a client's socket read returned the bytes carrying it, over every
  (event, client) pair; both processes read the same monotonic clock;
* memory per idle connection: the server's RSS growth from before the clients connect to when
  all of them hold an open stream, divided by the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The revision of a whole frame (the last field of the message JSON) or of a delta frame
# (right after its base).
REVISION = re.compile(rb'"revision":(\d+)\}\n|"base":\d+,"revision":(\d+)')


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the server process -------------------------------------------------------------------


async def child(db: str, rate: float, seconds: float) -> None:
    import uvicorn

    from messagestore import FinishReason, Role, batch_written, open_store
    from messagestore.server import create_app
    from pubsub import EventType

    async with open_store(f"sqlite+aiosqlite:///{db}", debounce=0) as store:
        app = create_app(store, keepalive=5)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        started = asyncio.Event()

        class Server(uvicorn.Server):
            async def startup(self, sockets: object = None) -> None:
                await super().startup(sockets=sockets)  # type: ignore[arg-type]
                started.set()

        server = Server(config)
        serving = asyncio.create_task(server.serve())
        await started.wait()
        port = server.servers[0].sockets[0].getsockname()[1]
        session = await store.sessions.create("bench")
        print(json.dumps({"port": port, "session": session.id}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go": the clients are connected
        # Commit times: batch_written fires in the commit hook, before the event is published
        # to anyone (debounce 0: one update, one batch, one revision, in commit order).
        batch_times: list[float] = []

        def on_batch(sender: object, **_: object) -> None:
            batch_times.append(time.monotonic())

        batch_written.connect(on_batch)
        revisions: list[int] = []
        feed = store.messages.subscribe(session_id=session.id)

        async def watch() -> None:
            async for event in feed:
                if event.type is not EventType.CREATED:
                    revisions.append(event.payload.revision)

        watcher = asyncio.create_task(watch())
        reply = await store.messages.create(session.id, role=Role.ASSISTANT)
        updates = int(rate * seconds)
        start = time.monotonic()
        for i in range(updates):
            reply.append_text(f"token{i} ")
            await store.messages.update(reply)
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        reply.add_finish(FinishReason.END_TURN)
        await store.messages.update(reply)
        elapsed = time.monotonic() - start
        await asyncio.sleep(1.0)  # let the clients read the tail
        feed.close()
        await asyncio.gather(watcher, return_exceptions=True)
        batch_written.disconnect(on_batch)
        if len(revisions) != len(batch_times):
            raise RuntimeError(f"{len(revisions)} revisions, {len(batch_times)} commits")
        commits = dict(zip(revisions, batch_times, strict=True))
        print(
            json.dumps({"commits": commits, "updates": updates + 1, "elapsed": elapsed}), flush=True
        )
        await asyncio.to_thread(sys.stdin.readline)  # "stop"
        app.drain()
        server.should_exit = True
        await serving


# -- the clients --------------------------------------------------------------------------


class Client:
    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.ready = asyncio.Event()
        self.done = asyncio.Event()

    async def run(self, port: int, session: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /api/events?session_id={session} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        tail = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                now = time.monotonic()
                self.ready.set()
                data = tail + chunk
                for match in REVISION.finditer(data):
                    self.seen.setdefault(int(match.group(1) or match.group(2)), now)
                cut = data.rfind(b"\n")
                tail = data[cut + 1 :] if cut >= 0 else data
                if b'"finished":true' in chunk:
                    self.done.set()
        finally:
            writer.close()


async def run_cell(clients: int, rate: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.bench_server",
            "--child",
            str(Path(tmp) / "bench.db"),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stdin is not None
        hello = json.loads(await process.stdout.readline())
        before = rss_kib(process.pid)
        pool = [Client() for _ in range(clients)]
        tasks = [asyncio.create_task(c.run(hello["port"], hello["session"])) for c in pool]
        async with asyncio.timeout(120):
            for client in pool:
                await client.ready.wait()
        await asyncio.sleep(0.5)
        idle = rss_kib(process.pid)
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        result = json.loads(await process.stdout.readline())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                for client in pool:
                    await client.done.wait()
        process.stdin.write(b"stop\n")
        await process.stdin.drain()
        await process.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    commits = {int(k): v for k, v in result["commits"].items()}
    latencies = [
        (at - commits[rev]) * 1000
        for client in pool
        for rev, at in client.seen.items()
        if rev in commits
    ]
    received = sum(len(c.seen) for c in pool)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "clients": clients,
        "updates": result["updates"],
        "events_per_s": received / result["elapsed"],
        "per_client": received / clients,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": quantiles[98],
        "kib_per_conn": (idle - before) / clients,
        "finished": sum(c.done.is_set() for c in pool),
    }


async def main_async(args: argparse.Namespace) -> None:
    print(
        f"messagestore HTTP event stream - Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; one message streamed at {args.rate:g} updates/s "
        f"for {args.seconds:g} s (debounce 0, SQLite)"
    )
    print(
        f"{'clients':>8}{'updates':>9}{'events/s':>11}{'per client':>12}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'KiB/idle conn':>15}{'saw finish':>12}"
    )
    for clients in args.clients:
        row = await run_cell(clients, args.rate, args.seconds)
        print(
            f"{row['clients']:>8}{row['updates']:>9}{row['events_per_s']:>11.0f}"
            f"{row['per_client']:>12.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
            f"{row['kib_per_conn']:>15.1f}{row['finished']:>12}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_server")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--child", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.rate, args.seconds))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
