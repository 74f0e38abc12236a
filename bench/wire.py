"""Deltas on the wire: ``python -m bench.wire`` (run from the repository root; the ``server``
extra).

One server process (``create_app`` under uvicorn on a fresh SQLite file, ``debounce=0`` so each
``update()`` is one written state and one event) that also writes the replies; the clients
are raw HTTP/1.1 connections to ``GET /api/events?session_id=S`` in this process. Every reply
is streamed in ``--token``-byte appends (16 bytes by default: about four tokens, what one
33 ms window of a model streaming 120 tokens/s holds) and then finished.

1. **Bytes per client.** For each reply size (``--sizes`` KB: 6, 24, 96) one client with
   deltas and one with whole states (``?deltas=0``) read the same stream side by side:
   the bytes each received (the response body on the wire, chunk framing included), the
   frames, and bytes per byte of text. With deltas the ratio stays flat as the reply grows;
   with whole states it grows with the reply (every frame carries the text so far).
2. **Server CPU per frame per client.** For ``--clients`` (1, 10, 100) caught-up clients of
   one mode, a ``--cpu-size`` KB reply at ``--rate`` updates/s: the server process's CPU time
   (``time.process_time``, from before the first update until every client has the finish),
   minus the same reply's CPU with no client (the writing and the feed), divided by the
   frames all clients received. Both modes side by side.

A client that falls behind gets states merged (fewer frames, one merged delta or the newest
whole state): ``frames`` says what arrived, next to ``updates`` written.

Output: a table (``--json`` for the figures as JSON). Figures from a shared machine vary from
run to run; compare the modes within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.write_path import ROOT, machine_info

__all__ = ["main"]

_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")
_EVENT = re.compile(rb"(?:^|\n)event: (\w+)\n")
_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "streaming",
    "its",
    "reply",
    "token",
    "by",
    "token",
]


def reply_text(size: int) -> str:
    """``size`` bytes of plain words (ASCII: one byte per character)."""
    words: list[str] = []
    length = 0
    n = 0
    while length < size:
        word = _WORDS[n % len(_WORDS)] + " "
        words.append(word)
        length += len(word)
        n += 1
    return "".join(words)[:size]


# -- the server process -------------------------------------------------------------------


async def serve(db: str) -> None:
    """The child: the app on a fresh store; commands on stdin, one JSON answer per line.

    ``session`` -> ``{"session": id}``; ``cpu`` -> ``{"cpu": seconds}``;
    ``stream SESSION BYTES TOKEN RATE`` -> ``{"revision", "updates", "text"}`` once the reply
    is finished (RATE 0: as fast as it writes); ``stop`` ends it.
    """
    import uvicorn

    from messagestore import FinishReason, Role, open_store
    from messagestore.server import create_app

    async with open_store(f"sqlite+aiosqlite:///{db}", debounce=0) as store:
        app = create_app(store, keepalive=5, max_streams=None)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        started = asyncio.Event()

        class Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                started.set()

        server = Server(config)
        serving = asyncio.create_task(server.serve())
        await started.wait()
        port = server.servers[0].sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).split()
            if not command or command[0] == "stop":
                break
            answer: dict[str, Any]
            if command[0] == "session":
                answer = {"session": (await store.sessions.create("bench")).id}
            elif command[0] == "cpu":
                answer = {"cpu": time.process_time()}
            else:
                _, session, size, token, rate = command
                text = reply_text(int(size))
                pieces = [text[i : i + int(token)] for i in range(0, len(text), int(token))]
                reply = await store.messages.create(session, role=Role.ASSISTANT)
                began = time.monotonic()
                for n, piece in enumerate(pieces):
                    reply.append_text(piece)
                    await store.messages.update(reply)
                    if float(rate) > 0:
                        delay = began + (n + 1) / float(rate) - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                reply.add_finish(FinishReason.END_TURN)
                await store.messages.update(reply)
                stored = await store.messages.get(reply.id)
                answer = {
                    "revision": stored.revision,
                    "updates": len(pieces) + 1,
                    "text": len(text),
                }
            print(json.dumps(answer), flush=True)
        app.drain()
        server.should_exit = True
        await serving


class Child:
    """The server process, driven over its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    async def start(cls, db: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.wire",
            "--child",
            db,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        hello = json.loads(await process.stdout.readline())
        return cls(process, hello["port"])

    async def ask(self, *words: object) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((" ".join(map(str, words)) + "\n").encode())
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the server process ended")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def stop(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(ConnectionError):
            self.process.stdin.write(b"stop\n")
            await self.process.stdin.drain()
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# -- the clients --------------------------------------------------------------------------


class Client:
    """One ``GET /api/events`` connection: bytes, frames by kind, the last resume point."""

    def __init__(self, deltas: bool) -> None:
        self.deltas = deltas
        self.bytes = 0
        self.kinds: Counter[str] = Counter()
        self.last_id = 0
        self.target: int | None = None
        self.ready = asyncio.Event()
        self.done = asyncio.Event()

    @property
    def frames(self) -> int:
        return sum(self.kinds.values())

    def reached(self, revision: int) -> None:
        self.target = revision
        if self.last_id >= revision:
            self.done.set()

    async def run(self, port: int, session: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            flag = "1" if self.deltas else "0"
            writer.write(
                f"GET /api/events?session_id={session}&deltas={flag} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            tail = b""
            while True:
                chunk = await reader.read(262144)
                if not chunk:
                    return
                self.bytes += len(chunk)
                data = tail + chunk
                cut = data.rfind(b"\n") + 1
                complete, tail = data[:cut], data[cut:]
                for match in _EVENT.finditer(complete):
                    self.kinds[match.group(1).decode()] += 1
                ids = _ID.findall(complete)
                if ids:
                    self.last_id = int(ids[-1])
                self.ready.set()
                if self.target is not None and self.last_id >= self.target:
                    self.done.set()
        finally:
            writer.close()


async def run_stream(
    child: Child, clients: list[Client], size: int, token: int, rate: float
) -> dict[str, Any]:
    """Connect ``clients`` to a new session, stream one reply, wait until every client has its
    finish; the reply's figures and the server's CPU seconds over it."""
    session = (await child.ask("session"))["session"]
    tasks = [asyncio.create_task(c.run(child.port, session)) for c in clients]
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.ready.wait() for c in clients))
        before = (await child.ask("cpu"))["cpu"]
        reply = await child.ask("stream", session, size, token, rate)
        for client in clients:
            client.reached(reply["revision"])
        async with asyncio.timeout(300):
            await asyncio.gather(*(c.done.wait() for c in clients))
        reply["cpu"] = (await child.ask("cpu"))["cpu"] - before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return reply


def _side(client: Client, text: int) -> dict[str, Any]:
    return {
        "frames": client.frames,
        "kinds": dict(client.kinds),
        "bytes": client.bytes,
        "bytes_per_text_byte": client.bytes / text,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": machine_info(),
        "token_bytes": args.token,
        "bytes": [],
        "cpu": {"size_kb": args.cpu_size, "rate": args.rate, "baseline_s": None, "cells": []},
    }
    with tempfile.TemporaryDirectory() as tmp:
        child = await Child.start(str(Path(tmp) / "wire.db"))
        try:
            for size_kb in args.sizes:
                deltas, whole = Client(deltas=True), Client(deltas=False)
                reply = await run_stream(child, [deltas, whole], size_kb * 1024, args.token, 0)
                report["bytes"].append(
                    {
                        "size_kb": size_kb,
                        "text": reply["text"],
                        "updates": reply["updates"],
                        "deltas": _side(deltas, reply["text"]),
                        "whole": _side(whole, reply["text"]),
                    }
                )
                _progress(f"bytes: {size_kb} KB done")
            size = args.cpu_size * 1024
            baseline = await run_stream(child, [], size, args.token, args.rate)
            report["cpu"]["baseline_s"] = baseline["cpu"]
            for count in args.clients:
                cell: dict[str, Any] = {"clients": count}
                for mode in ("deltas", "whole"):
                    pool = [Client(deltas=mode == "deltas") for _ in range(count)]
                    reply = await run_stream(child, pool, size, args.token, args.rate)
                    frames = sum(c.frames for c in pool)
                    extra = max(0.0, reply["cpu"] - baseline["cpu"])
                    cell[mode] = {
                        "updates": reply["updates"],
                        "frames_per_client": frames / count,
                        "bytes_per_client": sum(c.bytes for c in pool) / count,
                        "cpu_s": reply["cpu"],
                        "us_per_frame_per_client": extra / frames * 1e6 if frames else None,
                    }
                report["cpu"]["cells"].append(cell)
                _progress(f"cpu: {count} clients done")
        finally:
            await child.stop()
    return report


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _size(value: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def print_report(report: dict[str, Any]) -> None:
    machine = report["machine"]
    print(
        f"messagestore deltas on the wire - Python {machine['python']}, {machine['cores']} "
        f"cores ({machine['cpu']}); load {machine['load_average']}"
    )
    print(
        f"\nBytes per client for one reply, {report['token_bytes']}-byte appends, each its own "
        "state (debounce 0); deltas and whole states side by side on the same stream"
    )
    print(
        f"{'reply':>8}{'updates':>9} | {'frames':>7}{'bytes':>10}{'x text':>8} |"
        f" {'frames':>7}{'bytes':>10}{'x text':>8} | {'whole/deltas':>12}"
    )
    print(f"{'':>17} | {'with deltas':^25} | {'whole states (?deltas=0)':^25} |")
    for row in report["bytes"]:
        d, w = row["deltas"], row["whole"]
        print(
            f"{row['size_kb']:>5} KB{row['updates']:>9} | {d['frames']:>7}{_size(d['bytes']):>10}"
            f"{d['bytes_per_text_byte']:>8.1f} | {w['frames']:>7}{_size(w['bytes']):>10}"
            f"{w['bytes_per_text_byte']:>8.1f} | {w['bytes'] / d['bytes']:>11.1f}x"
        )
    cpu = report["cpu"]
    print(
        f"\nServer CPU per frame per client: a {cpu['size_kb']} KB reply at {cpu['rate']:g} "
        f"updates/s; CPU above the same reply with no client ({cpu['baseline_s'] * 1000:.0f} ms)"
    )
    print(
        f"{'clients':>8} | {'frames/client':>13}{'µs/frame/client':>17} |"
        f" {'frames/client':>13}{'µs/frame/client':>17}"
    )
    print(f"{'':>8} | {'with deltas':^30} | {'whole states':^30}")
    for cell in cpu["cells"]:
        line = f"{cell['clients']:>8}"
        for mode in ("deltas", "whole"):
            side = cell[mode]
            per = side["us_per_frame_per_client"]
            line += f" | {side['frames_per_client']:>13.0f}"
            line += f"{per:>17.1f}" if per is not None else f"{'-':>17}"
        print(line)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive integer expected, not {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.wire", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes", type=_positive, nargs="+", default=[6, 24, 96], help="reply sizes in KB"
    )
    parser.add_argument("--token", type=_positive, default=16, help="bytes per append")
    parser.add_argument("--clients", type=_positive, nargs="+", default=[1, 10, 100])
    parser.add_argument("--cpu-size", type=_positive, default=6, help="reply KB of the CPU cells")
    parser.add_argument("--rate", type=float, default=200.0, help="updates/s of the CPU cells")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", metavar="DB", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        asyncio.run(serve(args.child))
        return 0
    report = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
