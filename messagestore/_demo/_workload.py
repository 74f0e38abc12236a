"""A simulated agent workload: many conversations streaming into one store at a set token rate.

Shared by ``messagestore demo`` and the benchmark. Each stream is a scripted agent: a user
prompt, then an assistant reply that reasons, writes text, sometimes calls a tool (the call's
input streams, the call finishes, the result arrives as a tool message and the assistant goes
on), and finishes. Every delta is one ``MessageService.update()`` call.

One driver task paces all streams (thousands of per-stream ``sleep`` calls per second would cost
more than the updates themselves). Steps that wait on the database — creating a message, a
terminal update — run in tasks the driver owns, and only that stream waits for them; the driver
keeps feeding the others. Every task is awaited before ``run_workload`` returns.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from .. import FinishReason, Message, Role, Store, Text, ToolCall, ToolResult

__all__ = ["StreamStats", "WorkloadConfig", "WorkloadResult", "run_workload"]

_WORDS = [
    "the",
    "store",
    "buffers",
    "each",
    "delta",
    "and",
    "writes",
    "once",
    "per",
    "window",
    "so",
    "the",
    "database",
    "sees",
    "a",
    "few",
    "batched",
    "transactions",
    "while",
    "the",
    "interface",
    "still",
    "redraws",
    "smoothly",
    "for",
    "every",
    "reader",
    "of",
    "this",
    "conversation",
    "about",
    "code",
    "tests",
    "files",
    "errors",
    "tools",
    "and",
    "plans",
]
_SPACED_WORDS = tuple(word + " " for word in _WORDS)
_TOOLS = ("read_file", "grep", "run_tests", "list_dir", "edit_file")


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """What to simulate. ``rate`` is deltas per second per stream."""

    streams: int = 5
    duration: float = 10.0
    rate: float = 30.0
    tool_call_probability: float = 0.5
    reasoning: bool = True
    seed: int = 1
    tick: float = 0.005
    # Text deltas per assistant reply, drawn uniformly from this range; a huge range makes one
    # reply grow for the whole run (the benchmark's pure text streams).
    reply_tokens: tuple[int, int] = (20, 80)
    # Create each stream's opening messages before the clock starts, so ``duration`` and the
    # pacing cover streaming only (with thousands of streams the creates take seconds).
    warm_up: bool = False

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError(f"streams must be at least 1, not {self.streams}")
        if not self.duration > 0:
            raise ValueError(f"duration must be positive, not {self.duration}")
        if not self.rate > 0:
            raise ValueError(f"rate must be positive, not {self.rate}")
        if not 0 <= self.tool_call_probability <= 1:
            raise ValueError("tool_call_probability must be between 0 and 1")
        low, high = self.reply_tokens
        if not 1 <= low <= high:
            raise ValueError(f"reply_tokens must be a range 1 <= low <= high, not {low, high}")


@dataclass(slots=True)
class StreamStats:
    """What the streams did, counted by the driver."""

    deltas: int = 0
    messages_created: int = 0
    messages_finished: int = 0
    update_latencies_ns: list[int] = field(default_factory=list)
    # The non-terminal ones only (terminal updates wait for a write by design).
    delta_latencies_ns: list[int] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    """The run's counters; ``elapsed`` is wall time of the streaming phase."""

    config: WorkloadConfig
    stats: StreamStats
    elapsed: float
    session_ids: list[str]
    interrupted: bool


# -- one scripted agent --------------------------------------------------------------------


@dataclass(slots=True)
class _Update:
    """A delta: call ``update(message)``; ``terminal`` means it waits for a write."""

    message: Message
    terminal: bool = False


@dataclass(slots=True)
class _Create:
    """Create a message; the created message is sent back into the script."""

    role: Role
    parts: list[Any]


_Op = _Update | _Create
_Script = Generator[_Op, Message | None, None]


def _words(rng: random.Random, n: int) -> str:
    if n == 1:  # the per-token case: no join, no generator
        return rng.choice(_SPACED_WORDS)
    return "".join([rng.choice(_SPACED_WORDS) for _ in range(n)])


def _agent(rng: random.Random, config: WorkloadConfig, running: Callable[[], bool]) -> _Script:
    """Conversation turns until ``running()`` turns false; always finishes the open message."""
    turn = 0
    while running():
        turn += 1
        user = yield _Create(Role.USER, [Text(f"Request {turn}: " + _words(rng, 8))])
        assert user is not None
        yield from _assistant_turn(rng, config, running, turn)


def _assistant_turn(
    rng: random.Random, config: WorkloadConfig, running: Callable[[], bool], turn: int
) -> _Script:
    message = yield _Create(Role.ASSISTANT, [])
    assert message is not None
    if config.reasoning:
        for _ in range(rng.randint(5, 20)):
            message.append_reasoning(_words(rng, 1))
            yield _Update(message)
        message.finish_reasoning()
        yield _Update(message, terminal=True)
    yield from _stream_text(rng, message, running, rng.randint(*config.reply_tokens))
    if running() and rng.random() < config.tool_call_probability:
        message = yield from _tool_call(rng, message, turn)
        yield from _stream_text(rng, message, running, rng.randint(*config.reply_tokens))
    message.add_finish(FinishReason.END_TURN)
    yield _Update(message, terminal=True)


def _stream_text(
    rng: random.Random, message: Message, running: Callable[[], bool], tokens: int
) -> _Script:
    for _ in range(tokens):
        if not running():
            return
        message.append_text(_words(rng, 1))
        yield _Update(message)


def _tool_call(rng: random.Random, message: Message, turn: int) -> Generator[_Op, Any, Message]:
    """Call a tool, stream its input, finish it; the result comes as a tool message.

    The input streams as a JSON object the way a model writes one (``{"arg0": "word"``, then
    ``, "arg1": ...``), and the finished input is the whole object: it parses as JSON.
    """
    call = ToolCall(f"call-{turn}-{rng.randrange(1 << 30)}", rng.choice(_TOOLS))
    message.add_tool_call(call)
    yield _Update(message, terminal=True)
    for i in range(rng.randint(3, 10)):
        value = json.dumps(_words(rng, 1).strip())
        piece = ("{" if i == 0 else ", ") + f'"arg{i}": {value}'
        call = ToolCall(call.id, call.name, call.input + piece)
        message.add_tool_call(call)
        yield _Update(message)
    message.add_tool_call(ToolCall(call.id, call.name, call.input + "}", finished=True))
    yield _Update(message, terminal=True)
    message.add_finish(FinishReason.TOOL_USE)
    yield _Update(message, terminal=True)
    result = ToolResult(call.id, call.name, _words(rng, 30))
    yield _Create(Role.TOOL, [result])
    follow_up = yield _Create(Role.ASSISTANT, [])
    assert isinstance(follow_up, Message)
    return follow_up


# -- the driver ----------------------------------------------------------------------------


class _Stream:
    """One agent script bound to a session, with its pacing state."""

    __slots__ = ("blocked", "done", "held", "ops", "phase", "reply", "script", "session_id")

    def __init__(self, session_id: str, script: _Script, phase: float) -> None:
        self.session_id = session_id
        self.script = script
        self.phase = phase
        self.ops = 0
        self.reply: Message | None = None
        self.blocked = False
        self.done = False
        self.held: _Op | None = None

    def next_op(self) -> _Op | None:
        if self.held is not None:
            op, self.held = self.held, None
        else:
            try:
                op = self.script.send(self.reply)
            except StopIteration:
                self.done = True
                return None
            self.reply = None
        self.ops += 1
        return op


class _Driver:
    def __init__(self, store: Store, config: WorkloadConfig, stats: StreamStats) -> None:
        self.store = store
        self.config = config
        self.stats = stats
        self.tasks: set[asyncio.Task[None]] = set()
        # The first error of a blocking step: it ends that stream and is raised by the driver,
        # instead of surfacing later as a confusing error from the stream's script.
        self.failure: Exception | None = None

    async def run_op(self, stream: _Stream, op: _Op) -> None:
        """Do one op; blocking ops go to an owned task and block only their stream."""
        self.stats.deltas += 1
        if isinstance(op, _Update) and not op.terminal:
            started = time.perf_counter_ns()
            await self.store.messages.update(op.message)
            elapsed = time.perf_counter_ns() - started
            self.stats.update_latencies_ns.append(elapsed)
            self.stats.delta_latencies_ns.append(elapsed)
            return
        stream.blocked = True
        task = asyncio.get_running_loop().create_task(self._blocking(stream, op))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _blocking(self, stream: _Stream, op: _Op) -> None:
        try:
            if isinstance(op, _Create):
                model, provider = ("sim-1", "sim") if op.role is Role.ASSISTANT else ("", "")
                stream.reply = await self.store.messages.create(
                    stream.session_id, role=op.role, parts=op.parts, model=model, provider=provider
                )
                self.stats.messages_created += 1
            else:
                await self._terminal_update(op.message)
        except Exception as exc:
            stream.done = True
            if self.failure is None:
                self.failure = exc
        finally:
            stream.blocked = False

    async def _terminal_update(self, message: Message) -> None:
        started = time.perf_counter_ns()
        await self.store.messages.update(message)
        self.stats.update_latencies_ns.append(time.perf_counter_ns() - started)
        if message.is_finished:
            self.stats.messages_finished += 1
            self.stats.finished_ids.append(message.id)

    async def wait_all(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))


async def run_workload(
    store: Store,
    config: WorkloadConfig,
    *,
    stop: asyncio.Event | None = None,
    on_tick: Callable[[StreamStats], Awaitable[None] | None] | None = None,
) -> WorkloadResult:
    """Stream ``config.streams`` conversations for ``config.duration`` seconds into ``store``.

    Setting ``stop`` ends streaming early: every open message still gets its finish, so the
    stored conversations are complete. ``on_tick`` is called after every driver tick (for
    progress displays). Returns once every write the workload started has returned.
    """
    rng = random.Random(config.seed)
    loop = asyncio.get_running_loop()
    sessions = [
        await store.sessions.create(f"simulated agent {i + 1}") for i in range(config.streams)
    ]
    started = loop.time()
    deadline = started + config.duration
    stop = stop or asyncio.Event()

    def running() -> bool:
        return not stop.is_set() and loop.time() < deadline

    streams = [
        _Stream(s.id, _agent(random.Random(rng.random()), config, running), rng.random())
        for s in sessions
    ]
    stats = StreamStats()
    driver = _Driver(store, config, stats)
    try:
        if config.warm_up:
            deadline = float("inf")  # the clock starts after the warm-up
            await _warm_up(driver, streams)
            started = loop.time()
            deadline = started + config.duration
        await _drive(driver, streams, started, on_tick)
    finally:
        await driver.wait_all()
    if driver.failure is not None:
        raise driver.failure
    return WorkloadResult(
        config, stats, loop.time() - started, [s.id for s in sessions], stop.is_set()
    )


async def _warm_up(driver: _Driver, streams: list[_Stream]) -> None:
    """Run every stream's opening creates; its first delta is held for the driver."""

    async def open_stream(stream: _Stream) -> None:
        op = stream.next_op()
        while isinstance(op, _Create):
            await driver._blocking(stream, op)
            op = stream.next_op()
        stream.held = op
        stream.ops = 0

    await asyncio.gather(*(open_stream(stream) for stream in streams))


async def _drive(
    driver: _Driver,
    streams: list[_Stream],
    started: float,
    on_tick: Callable[[StreamStats], Awaitable[None] | None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    rate = driver.config.rate
    tick = driver.config.tick
    live = streams
    while live:
        elapsed = loop.time() - started
        yielded = loop.time()
        for stream in live:
            owed = int((elapsed + stream.phase / rate) * rate) - stream.ops
            while owed > 0 and not stream.blocked and not stream.done:
                op = stream.next_op()
                if op is None:
                    break
                owed -= 1
                await driver.run_op(stream, op)
            # Real streams are separate tasks, so the loop runs the store's writes between
            # their deltas; a long pass over thousands of streams lets it run every tick too.
            if loop.time() - yielded >= tick:
                await asyncio.sleep(0)
                yielded = loop.time()
        if driver.failure is not None:
            raise driver.failure
        live = [s for s in live if not s.done]
        if on_tick is not None:
            result = on_tick(driver.stats)
            if result is not None:
                await result
        await asyncio.sleep(driver.config.tick)
