"""Child process for the two-writers test (run as a script, never imported by pytest).

Opens the store (racing the other process for the migration), streams ``--streams``
conversations at once with a short debounce while a reader lists them, then prints one JSON
line: the write-failure counter, every error raised, and the final text of every message.
Lease heartbeats run every ``--lease-ttl / 3`` seconds, so they compete for the lock too.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from messagestore import FinishReason, Role, Store, ToolCall, ToolResult, write_failed
from messagestore._store import StoreOptions, open_store_with
from messagestore.testing import lease_state


async def converse(store: Store, session_id: str, n: int, deltas: int, errors: list[str]) -> None:
    try:
        message = await store.messages.create(session_id, role=Role.ASSISTANT)
        for i in range(deltas):
            message.append_text(f"<{n}.{i}>")
            await store.messages.update(message)
            if i == deltas // 2:
                message.add_tool_call(ToolCall(f"c{n}", "run", "{}", finished=True))
                await store.messages.update(message)
                await store.messages.create(
                    session_id, role=Role.TOOL, parts=[ToolResult(f"c{n}", "run", "ok")]
                )
            await asyncio.sleep(0.001)
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
    except Exception as exc:  # reported to the parent, which fails the test
        errors.append(repr(exc))


async def read(store: Store, session_id: str, stop: asyncio.Event, errors: list[str]) -> int:
    reads = 0
    while not stop.is_set():
        try:
            await store.messages.list(session_id)
            reads += 1
        except Exception as exc:
            errors.append(repr(exc))
        await asyncio.sleep(0.005)
    return reads


async def main(args: argparse.Namespace) -> None:
    errors: list[str] = []
    failures: list[str] = []
    write_failed.connect(lambda sender, **kw: failures.append(repr(kw["error"])), weak=False)
    store = await open_store_with(
        args.url, StoreOptions(debounce=args.debounce, lease_ttl=args.lease_ttl)
    )
    try:
        session = await store.sessions.create(args.name)
        stop = asyncio.Event()
        reader = asyncio.create_task(read(store, session.id, stop, errors))
        await asyncio.gather(
            *(converse(store, session.id, n, args.deltas, errors) for n in range(args.streams))
        )
        await store.messages.flush_all()
        stop.set()
        reads = await reader
        stats = store.messages.stats()
        messages = {m.id: [m.text, m.is_finished] for m in await store.messages.list(session.id)}
        lease = lease_state(store)
        assert lease is not None
        report = {
            "session": session.id,
            "write_failures": stats.write_failures,
            "transactions": stats.transactions,
            "failures": failures,
            "errors": errors,
            "reads": reads,
            "heartbeats": lease.heartbeats,
            "heartbeat_failures": lease.failures,
            "messages": messages,
        }
    finally:
        await store.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--deltas", type=int, default=200)
    parser.add_argument("--debounce", type=float, default=0.005)
    parser.add_argument("--lease-ttl", type=float, default=0.5)
    asyncio.run(main(parser.parse_args()))
