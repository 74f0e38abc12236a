"""Child process of the wire tests: streams random messages into a session (run as
``python -m tests.support.wire_writer URL SESSION_ID`` from the repository root; never
imported by pytest).

It opens its own store on the database, prints ``ready``, runs ``--streams`` concurrent
writers of ``--messages`` messages each (see :func:`write_messages`), prints ``done`` and
closes the store (everything flushed). The parent learns the final revision from the
database itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random

from messagestore import FinishReason, ImageURL, Role, Store, ToolCall, ToolResult, open_store

WORDS = ["alpha", "beta", "gamma", "δέλτα", "emoji 🚀", "tab\t", 'quote"d', "new\nline", "x"]


def chunk(rng: random.Random) -> str:
    """A streamed piece of text: mostly a few words, sometimes a long paste (so that a client
    that stops reading fills the server's socket buffers)."""
    if rng.random() < 0.1:
        return "".join(rng.choice(WORDS) + " " for _ in range(rng.randint(200, 700)))
    return "".join(rng.choice(WORDS) + " " for _ in range(rng.randint(1, 4)))


async def write_messages(
    store: Store, session_id: str, rng: random.Random, *, messages: int, pause: float, tag: str
) -> None:
    """``messages`` messages, one after another: a user prompt now and then; replies that may
    think (reasoning that ends), stream text, attach an image that is taken back (a change a
    delta cannot express: a part removed), call a tool whose input streams as JSON (answered
    by a tool message), and finish; some are deleted mid-stream or after finishing."""

    async def step() -> None:
        await store.messages.update(reply)
        await asyncio.sleep(pause * rng.random())

    for n in range(messages):
        if rng.random() < 0.3:
            await store.messages.create(session_id, role=Role.USER, parts=[])
        reply = await store.messages.create(session_id, role=Role.ASSISTANT, model="m")
        doomed = rng.random() < 0.15
        cut = rng.randrange(40) if doomed and rng.random() < 0.5 else None
        if rng.random() < 0.4:
            for _ in range(rng.randint(2, 12)):
                reply.append_reasoning(chunk(rng))
                await step()
            reply.finish_reasoning()
            await step()
        for i in range(rng.randint(10, 80)):
            if cut == i:
                break
            reply.append_text(chunk(rng))
            await step()
            if rng.random() < 0.03:
                reply.add_image_url(f"https://example.com/{tag}-{n}-{i}.png")
                await step()
                reply.parts = [p for p in reply.parts if not isinstance(p, ImageURL)]
                await step()
        if cut is not None:
            await store.messages.delete(reply.id)
            continue
        if rng.random() < 0.4:
            call_id = f"call-{tag}-{n}"
            arguments = json.dumps({"query": chunk(rng), "limit": rng.randint(1, 9)})
            sent = 0
            while sent < len(arguments):
                sent = min(len(arguments), sent + rng.randint(1, 12))
                reply.add_tool_call(ToolCall(call_id, "search", arguments[:sent]))
                await step()
            reply.add_tool_call(ToolCall(call_id, "search", arguments, finished=True))
            await step()
            reply.add_finish(FinishReason.TOOL_USE)
            await step()
            result = ToolResult(call_id, "search", f"found {n}", is_error=rng.random() < 0.2)
            await store.messages.create(session_id, role=Role.TOOL, parts=[result])
        else:
            reply.add_finish(rng.choice([FinishReason.END_TURN, FinishReason.MAX_TOKENS]))
            await step()
        if doomed:
            await store.messages.delete(reply.id)


async def run(args: argparse.Namespace) -> None:
    async with open_store(args.url, debounce=args.debounce) as store:
        print("ready", flush=True)
        rng = random.Random(args.seed)
        await asyncio.gather(
            *(
                write_messages(
                    store,
                    args.session,
                    random.Random(rng.random()),
                    messages=args.messages,
                    pause=args.pause,
                    tag=str(stream),
                )
                for stream in range(args.streams)
            )
        )
        print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("session")
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--messages", type=int, default=6)
    parser.add_argument("--pause", type=float, default=0.02)
    parser.add_argument("--debounce", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
