"""Child process for the cross-process feed tests (run as
``python -m tests.support.feed_child`` from the repository root; never imported by pytest).

``stream``: open a store, create a session, print ``ready <session_id>``, stream
``--streams`` concurrent writers of ``--messages`` replies each
(``tests.support.feed_helpers.stream``:
text deltas, tool calls, finishes, deletions), print ``done`` and close.

``subscribe``: open a store, ``store.messages.subscribe(since=--since)``, print ``subscribed``,
and append one line per event to ``--evidence``, with ONE ``os.write`` each (a line is in
the kernel before the next event is taken, so it survives SIGKILL)::

    e <message_id> <revision> <type> <subscription revision after it>

It stops once ``Subscription.revision`` reaches ``--until``, or the number given later on
stdin as ``until <revision>``. ``--buffer`` and ``--delay`` (seconds between reads) make it a
slow UI. The parent kills it with SIGKILL at random moments and starts
the next incarnation with ``--since`` = the last line's subscription revision.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys

from messagestore import Message, open_store
from messagestore._store import StoreOptions, open_store_with
from pubsub import Event
from tests.support.feed_helpers import stream


async def run_stream(args: argparse.Namespace) -> None:
    async with open_store_with(args.url, StoreOptions(debounce=args.debounce)) as store:
        session = await store.sessions.create("cross-process")
        print("ready", session.id, flush=True)
        rng = random.Random(args.seed)
        writers = [
            stream(
                store,
                session.id,
                messages=args.messages,
                deltas=args.deltas,
                rng=random.Random(rng.random()),
                delete_every=args.delete_every,
                pause=args.pause,
            )
            for _ in range(args.streams)
        ]
        await asyncio.gather(*writers)
        print("done", flush=True)


async def run_subscribe(args: argparse.Namespace) -> None:
    fd = os.open(args.evidence, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    until: list[int | None] = [args.until]

    async def listen_for_until() -> None:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            word, _, value = line.partition(" ")
            if word == "until":
                until[0] = int(value)

    async with open_store(args.url) as store:
        since = None if args.since == "none" else int(args.since)
        sub = store.messages.subscribe(since=since, buffer_size=args.buffer)
        print("subscribed", flush=True)
        listener = asyncio.create_task(listen_for_until())
        receiving: asyncio.Future[Event[Message]] | None = None
        try:
            while True:
                target = until[0]
                if target is not None and sub.revision is not None and sub.revision >= target:
                    return
                if receiving is None:
                    receiving = asyncio.ensure_future(sub.receive())
                done, _ = await asyncio.wait([receiving], timeout=0.1)
                if not done:
                    continue
                event = receiving.result()
                receiving = None
                message = event.payload
                line = f"e {message.id} {message.revision} {event.type} {sub.revision}\n"
                os.write(fd, line.encode())
                if args.delay:
                    await asyncio.sleep(args.delay)  # a slow UI
        finally:
            listener.cancel()
            if receiving is not None:
                receiving.cancel()
            sub.close()
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["stream", "subscribe"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--messages", type=int, default=6)
    parser.add_argument("--deltas", type=int, default=25)
    parser.add_argument("--pause", type=float, default=0.004)
    parser.add_argument("--delete-every", type=int, default=4)
    parser.add_argument("--debounce", type=float, default=0.033)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--since", default="0")
    parser.add_argument("--until", type=int, default=None)
    parser.add_argument("--buffer", type=int, default=None)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--evidence", default="")
    args = parser.parse_args()
    asyncio.run(run_stream(args) if args.mode == "stream" else run_subscribe(args))


if __name__ == "__main__":
    main()
