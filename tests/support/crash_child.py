"""Child process for the crash and recovery tests (run as a script, never imported by pytest).

``stream``: open the store, stream conversations forever-ish, and leave evidence of every step
in an append-only file, one ``os.write`` per line (no Python buffering: a line is in the
kernel before the next step starts, so it survives SIGKILL). The parent kills this process
at a random moment and checks the database against the evidence. Lines::

    writer <writer_id>
    session <session_id>
    user <k> <message_id> <t>       the user message of turn k was created
    created <k> <message_id> <t>    the assistant message of turn k was created
    d <k> <i> <t>                   update() with text delta i of turn k returned (accepted)
    fl <k> <i> <t>                  flush() returned after delta i (half-way through the turn)
    t <k> <t>                       the terminal update adding the tool call returned
    f <k> <reason> <t>              the terminal update adding the finish returned
    r <k> <message_id> <t>          the tool-result message was created
    ws|we <t>                       a batch write (``Repository.write_messages``) started /
                                    ended: a timer-fired, flush or terminal write
    hs|he <t>                       a lease heartbeat started / ended (for failure messages)

``t`` is ``time.monotonic()`` (system-wide on Linux, so comparable with the parent's clock).
Turn k streams ``deltas`` text deltas ``delta_text(k, i)``; odd turns then add a finished tool
call ``call-k``, finish with ``tool_use`` and create a tool message answering it.

``hold``: create a session with a streaming assistant message (text, an unanswered tool call),
flush it, print ``<writer_id> <session_id> <message_id>`` and wait for a line on stdin; then
exit at once WITHOUT closing the store (as a crash would), or close it if the line is
``close``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from messagestore import (
    FinishReason,
    Role,
    Text,
    ToolCall,
    ToolResult,
)
from messagestore._store import StoreOptions, open_store_with


def delta_text(k: int, i: int) -> str:
    """The i-th text delta of turn k (the parent rebuilds the stream from this)."""
    return f"[{k}.{i:05d}]lorem ipsum "


async def stream(args: argparse.Namespace) -> None:
    fd = os.open(args.evidence, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(*fields: object) -> None:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())

    store = await open_store_with(
        args.url, StoreOptions(debounce=args.debounce, lease_ttl=args.lease_ttl)
    )
    note("writer", store.writer_id)
    repository = store._repository
    real_write = repository.write_messages
    real_renew = repository.renew_writer

    def traced_write(*a: Any, **kw: Any) -> Any:
        note("ws", time.monotonic())
        future = real_write(*a, **kw)
        future.add_done_callback(lambda _: note("we", time.monotonic()))
        return future

    async def traced_renew(*a: Any) -> Any:
        note("hs", time.monotonic())
        try:
            return await real_renew(*a)
        finally:
            note("he", time.monotonic())

    repository.write_messages = traced_write  # type: ignore[method-assign]
    repository.renew_writer = traced_renew  # type: ignore[method-assign]
    session = await store.sessions.create("crash")
    note("session", session.id)
    print("ready", flush=True)
    for k in range(args.turns):
        user = await store.messages.create(session.id, role=Role.USER, parts=[Text(f"turn {k}")])
        note("user", k, user.id, time.monotonic())
        message = await store.messages.create(session.id, role=Role.ASSISTANT, model="m")
        note("created", k, message.id, time.monotonic())
        for i in range(args.deltas):
            message.append_text(delta_text(k, i))
            await store.messages.update(message)
            note("d", k, i, time.monotonic())
            if i == args.deltas // 2:
                await store.messages.flush(message.id)
                note("fl", k, i, time.monotonic())
            await asyncio.sleep(args.pause)
        if k % 2:
            message.add_tool_call(ToolCall(f"call-{k}", "run", f'{{"turn": {k}}}', finished=True))
            await store.messages.update(message)
            note("t", k, time.monotonic())
            message.add_finish(FinishReason.TOOL_USE)
            await store.messages.update(message)
            note("f", k, FinishReason.TOOL_USE.value, time.monotonic())
            await asyncio.sleep(args.pause * 10)  # the tool runs
            result = ToolResult(f"call-{k}", "run", f"result {k}")
            tool = await store.messages.create(session.id, role=Role.TOOL, parts=[result])
            note("r", k, tool.id, time.monotonic())
        else:
            message.add_finish(FinishReason.END_TURN)
            await store.messages.update(message)
            note("f", k, FinishReason.END_TURN.value, time.monotonic())
    note("done")
    await store.close()


async def hold(args: argparse.Namespace) -> None:
    store = await open_store_with(args.url, StoreOptions(lease_ttl=args.lease_ttl))
    session = await store.sessions.create("held")
    message = await store.messages.create(session.id, role=Role.ASSISTANT)
    message.append_text("streaming in another process")
    message.add_tool_call(ToolCall("held-call", "run", "{}", finished=True))
    await store.messages.update(message)
    await store.messages.flush(message.id)
    print(store.writer_id, session.id, message.id, flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() == "close":
        await store.close()
        return
    os._exit(0)  # like a crash: no close, the lease row stays until it expires


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["stream", "hold"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--evidence", default="")
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--deltas", type=int, default=60)
    parser.add_argument("--pause", type=float, default=0.002)
    parser.add_argument("--debounce", type=float, default=0.033)
    parser.add_argument("--lease-ttl", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(stream(args) if args.mode == "stream" else hold(args))


if __name__ == "__main__":
    main()
