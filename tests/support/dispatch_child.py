"""Child process for the dispatcher's multi-process and SIGKILL tests (run as a script).

``serve``: open the store, run a ``Dispatcher`` until a line arrives on stdin (then close it
gracefully and print its stats) or until killed. Every turn leaves evidence in an append-only
file, one ``os.write`` per line, so a line is in the kernel before the next step starts and
survives SIGKILL::

    owner <dispatcher owner id> <writer id>
    start <turn_id> <session_id> <input ids, comma-separated> <t>   run_turn began
    end <turn_id> <t>                                                run_turn is returning
    stats <json>                                                     after a graceful close

``t`` is ``time.monotonic()`` (system-wide on Linux, comparable across processes). Each turn
creates its reply and streams ``--deltas`` words over ``--turn-seconds``, then finishes it;
with ``--tool-call`` the reply first gets a tool call whose input is still streaming.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time

from messagestore import FinishReason, ToolCall
from messagestore._store import StoreOptions, open_store_with
from messagestore.dispatch import Dispatcher, QueueConfig, Turn


async def serve(args: argparse.Namespace) -> None:
    fd = os.open(args.evidence, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(*fields: object) -> None:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())

    store = await open_store_with(args.url, StoreOptions(lease_ttl=args.lease_ttl))

    async def run_turn(turn: Turn) -> None:
        ids = ",".join(i.id for i in turn.inputs)
        note("start", turn.id, turn.session_id, ids, time.monotonic())
        reply = await turn.reply(model="toy")
        if args.tool_call:
            reply.add_tool_call(ToolCall(f"call-{turn.id}", "search", '{"q": '))
            await store.messages.update(reply)  # terminal: written before it returns
        for i in range(args.deltas):
            reply.append_text(f"w{i} ")
            await store.messages.update(reply)
            await asyncio.sleep(args.turn_seconds / args.deltas)
        reply.add_finish(FinishReason.END_TURN)
        await store.messages.update(reply)
        note("end", turn.id, time.monotonic())

    config = QueueConfig(debounce=args.debounce, max_wait=max(args.debounce, 0.2), cap=10_000)
    dispatcher = Dispatcher(
        store, run_turn, config, poll_interval=args.poll, claim_ttl=args.claim_ttl
    )
    async with dispatcher:
        note("owner", dispatcher.owner, store.writer_id)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    note("stats", json.dumps(dataclasses.asdict(dispatcher.stats())))
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--evidence", required=True)
    parser.add_argument("--deltas", type=int, default=10)
    parser.add_argument("--turn-seconds", type=float, default=0.1)
    parser.add_argument("--debounce", type=float, default=0.02)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--claim-ttl", type=float, default=1.0)
    parser.add_argument("--lease-ttl", type=float, default=1.0)
    parser.add_argument("--tool-call", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
