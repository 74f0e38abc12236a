"""One cell of ``python -m bench.peers``, in its own process.

``python -m bench.peers_child run SPEC_JSON OUT``: S streams at R deltas/s for T seconds into
one peer; writes the cell's figures as JSON to OUT.

``python -m bench.peers_child kill SPEC_JSON COUNTERS``: the same streams without end; prints
``streaming`` when the window opens, and after every delta the peer acknowledged (its call
returned) stores that stream's count in COUNTERS, a file of S int64 mapped into memory — the
kernel keeps those pages when the process is killed, so the parent reads what was
acknowledged up to the SIGKILL.

``python -m bench.peers_child count SPEC_JSON OUT``: opens the peer afresh and writes the
deltas readable per stream (``{"readable": [...]}``); for Redis it then deletes the streams.

The peers (``SPEC.peer``), each fed one call per delta:

* ``messagestore``: ``store.messages.update(reply)`` with the default debounce (group
  commit); the call returns at once, the delta is durable at the commit of the batch that took
  it. Staleness per delta: from the call to that commit (a hook on the store's batch write
  notes which deltas each batch took).
* ``agents-sdk``: the OpenAI Agents SDK's ``SQLAlchemySession`` (one engine shared by the S
  sessions, as an application holds one), ``add_items([{"role": "assistant", "content":
  delta}])`` per delta: each delta appended as a new item (one transaction, committed when
  the call returns). Staleness: the call's duration.
* ``redis-stream``: ``XADD reply:<stream> * d <delta>`` per delta (redis-py's asyncio client,
  a pool of at most 64 connections). Staleness: the call's duration; Redis here keeps nothing
  on disk, so this is "visible to a reader", not durable.

The driver paces every stream at R deltas/s from one task (a random phase per stream). A peer
whose call waits for the write (SDK, Redis) gets a task per call, and that stream issues its
next delta only when the call returned: deltas it cannot take in time show up as a lower
accepted rate, not as staleness (the write benchmark's rule for write-through).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.stats import percentiles

__all__ = ["PeerSpec", "main"]

_TICK = 0.005
_LAG_INTERVAL = 0.010
_REDIS_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One run: which peer, on which database, what load."""

    peer: str  # messagestore | agents-sdk | redis-stream
    url: str  # a database URL, or redis://host:port/db
    streams: int = 10
    rate: float = 50.0
    duration: float = 5.0
    debounce: float = 0.033
    prefix: str = "peers"
    seed: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PeerSpec:
        return cls(**json.loads(text))


def delta_text(seq: int) -> str:
    """The ``seq``-th delta of a stream: one word, so a reader can count what survived."""
    return f"d{seq} "


def _wchar() -> int | None:
    """Bytes this process passed to ``write()`` (SQLite: WAL frames and checkpoints)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return None


async def _wal_lsn(engine: Any) -> int:
    return await _scalar(engine, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")


async def _database_size(engine: Any) -> int:
    return await _scalar(engine, "SELECT pg_database_size(current_database())")


async def _scalar(engine: Any, query: str) -> int:
    from sqlalchemy import text

    async with engine.connect() as conn:
        return int((await conn.execute(text(query))).scalar_one())


# -- the peers -------------------------------------------------------------------------------


class Peer:
    """One way to keep streamed deltas. ``blocking``: ``append`` returns once the delta is
    durable (or visible); otherwise it returns at once and the peer reports staleness itself."""

    blocking = True
    durable = True
    bytes_kind = "physical"

    def __init__(self, spec: PeerSpec) -> None:
        self.spec = spec
        self.staleness: list[float] = []  # seconds, for non-blocking peers

    async def open(self, *, create: bool) -> None:
        raise NotImplementedError

    async def append(self, stream: int, text: str) -> None:
        raise NotImplementedError

    async def settle(self) -> None:
        """Make everything accepted durable (non-blocking peers)."""

    async def bytes_mark(self) -> int | None:
        raise NotImplementedError

    async def readable(self) -> list[int]:
        """Deltas a reader finds per stream now."""
        raise NotImplementedError

    async def size_mark(self) -> int | None:
        """PostgreSQL: the database's size (``pg_database_size``): what the tables and
        indexes grew by, free of other databases' WAL on a shared server."""
        return None

    async def extra(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        raise NotImplementedError


class MessagestorePeer(Peer):
    blocking = False

    def __init__(self, spec: PeerSpec) -> None:
        super().__init__(spec)
        self._stack = contextlib.AsyncExitStack()
        self._store: Any = None
        self._replies: list[Any] = []
        self._pending: dict[str, list[float]] = {}
        self._postgres = spec.url.startswith("postgresql")

    async def open(self, *, create: bool) -> None:
        from messagestore import Role, Text, open_store

        self._store = store = await self._stack.enter_async_context(
            open_store(self.spec.url, debounce=self.spec.debounce)
        )
        if not create:
            return
        for i in range(self.spec.streams):
            session = await store.sessions.create(f"{self.spec.prefix}-{i}")
            await store.messages.create(session.id, role=Role.USER, parts=[Text("prompt")])
            self._replies.append(await store.messages.create(session.id, role=Role.ASSISTANT))
        self._trace(store)

    def _trace(self, store: Any) -> None:
        """Note, for each batch the writer takes, the deltas in it; at its commit, their
        staleness (the batch is taken and submitted in one step, so every delta accepted
        before the submit is in it)."""
        repository = store._repository
        real = repository.write_messages
        pending, samples = self._pending, self.staleness

        def traced(items: Sequence[Any], on_commit: Any, **kw: Any) -> Any:
            taken = {item.state.id: pending.pop(item.state.id, []) for item in items}

            def hook(result: Any, revisions: Any, *recorded: Any) -> None:
                now = time.perf_counter()
                for message_id in result.items:
                    samples.extend(now - t for t in taken.get(message_id, ()))
                on_commit(result, revisions, *recorded)

            return real(items, hook, **kw)

        repository.write_messages = traced

    async def append(self, stream: int, text: str) -> None:
        reply = self._replies[stream]
        reply.append_text(text)
        self._pending.setdefault(reply.id, []).append(time.perf_counter())
        await self._store.messages.update(reply)

    async def settle(self) -> None:
        await self._store.messages.flush_all()

    async def bytes_mark(self) -> int | None:
        return await _wal_lsn(self._store.engine) if self._postgres else _wchar()

    async def size_mark(self) -> int | None:
        return await _database_size(self._store.engine) if self._postgres else None

    async def readable(self) -> list[int]:
        from messagestore import Role

        counts = [0] * self.spec.streams
        names = {f"{self.spec.prefix}-{i}": i for i in range(self.spec.streams)}
        for session in await self._store.sessions.list():
            index = names.get(session.title)
            if index is None:
                continue
            for message in await self._store.messages.list(session.id):
                if message.role is Role.ASSISTANT:
                    counts[index] = len(message.text.split())
        return counts

    async def extra(self) -> dict[str, Any]:
        stats = self._store.messages.stats()
        return {"transactions": stats.transactions, "rows_written": stats.rows_written}

    async def close(self) -> None:
        await self._stack.aclose()


class AgentsSdkPeer(Peer):
    def __init__(self, spec: PeerSpec) -> None:
        super().__init__(spec)
        self._engine: Any = None
        self._sessions: list[Any] = []
        self._postgres = spec.url.startswith("postgresql")

    async def open(self, *, create: bool) -> None:
        from agents.extensions.memory import SQLAlchemySession
        from sqlalchemy.ext.asyncio import create_async_engine

        # What SQLAlchemySession.from_url does, once for all sessions.
        self._engine = create_async_engine(self.spec.url)
        self._sessions = [
            SQLAlchemySession(
                f"{self.spec.prefix}-{i}", engine=self._engine, create_tables=create and i == 0
            )
            for i in range(self.spec.streams)
        ]
        if create:  # the user's prompt before the reply (creates the tables and sessions)
            for session in self._sessions:
                await session.add_items([{"role": "user", "content": "prompt"}])

    async def append(self, stream: int, text: str) -> None:
        await self._sessions[stream].add_items([{"role": "assistant", "content": text}])

    async def bytes_mark(self) -> int | None:
        return await _wal_lsn(self._engine) if self._postgres else _wchar()

    async def size_mark(self) -> int | None:
        return await _database_size(self._engine) if self._postgres else None

    async def readable(self) -> list[int]:
        counts = []
        for session in self._sessions:
            items = await session.get_items()
            counts.append(sum(1 for item in items if item.get("role") == "assistant"))
        return counts

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()


class RedisStreamPeer(Peer):
    durable = False
    bytes_kind = "memory"

    def __init__(self, spec: PeerSpec) -> None:
        super().__init__(spec)
        self._client: Any = None
        self._pool: Any = None
        self._keys = [f"{spec.prefix}:reply:{i}" for i in range(spec.streams)]

    async def open(self, *, create: bool) -> None:
        import redis.asyncio as aioredis

        self._pool = aioredis.BlockingConnectionPool.from_url(
            self.spec.url, max_connections=_REDIS_CONNECTIONS
        )
        self._client = aioredis.Redis(connection_pool=self._pool)
        await self._client.ping()
        if create:
            await self._client.delete(*self._keys)

    async def append(self, stream: int, text: str) -> None:
        await self._client.xadd(self._keys[stream], {"d": text})

    async def bytes_mark(self) -> int | None:
        info = await self._client.info("memory")
        return int(info["used_memory"])

    async def readable(self) -> list[int]:
        return [int(await self._client.xlen(key)) for key in self._keys]

    async def extra(self) -> dict[str, Any]:
        usage = 0
        for key in self._keys:
            usage += int(await self._client.memory_usage(key, samples=0) or 0)
        save = (await self._client.config_get("save")).get("save", "")
        appendonly = (await self._client.config_get("appendonly")).get("appendonly", "")
        return {
            "stream_memory_bytes": usage,
            "redis_save": save,
            "redis_appendonly": appendonly,
            "on_disk": bool(save) or appendonly == "yes",
        }

    async def drop(self) -> None:
        await self._client.delete(*self._keys)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._pool is not None:  # a pool passed in is not the client's to close
            await self._pool.disconnect()


PEERS: dict[str, type[Peer]] = {
    "messagestore": MessagestorePeer,
    "agents-sdk": AgentsSdkPeer,
    "redis-stream": RedisStreamPeer,
}


# -- the driver -------------------------------------------------------------------------------


class Driver:
    """Paces S streams at R deltas/s into ``peer`` (see the module docstring)."""

    def __init__(self, peer: Peer, spec: PeerSpec, counters: memoryview | None = None) -> None:
        self.peer = peer
        self.spec = spec
        self.counters = counters
        rng = random.Random(spec.seed)
        self.phases = [rng.random() for _ in range(spec.streams)]
        self.issued = [0] * spec.streams
        self.acked = [0] * spec.streams
        self.blocked = [False] * spec.streams
        self.call_seconds: list[float] = []  # blocking peers: issue -> return
        self.issue_lag: list[float] = []  # scheduled -> issued
        self.failures = 0
        self.first_error = ""
        self._tasks: set[asyncio.Task[None]] = set()

    def _ack(self, stream: int) -> None:
        self.acked[stream] += 1
        if self.counters is not None:
            self.counters[stream] = self.acked[stream]

    async def _call(self, stream: int, seq: int) -> None:
        started = time.perf_counter()
        try:
            await self.peer.append(stream, delta_text(seq))
        except Exception as exc:
            self.failures += 1
            self.first_error = self.first_error or repr(exc)[:300]
        else:
            self.call_seconds.append(time.perf_counter() - started)
            self._ack(stream)
        finally:
            self.blocked[stream] = False

    async def run(self, duration: float) -> float:
        """Stream for ``duration`` seconds (forever if infinite); return the window's length.
        In-flight calls are awaited before it returns."""
        rate = self.spec.rate
        start = time.perf_counter()
        end = start + duration
        blocking = self.peer.blocking
        loop = asyncio.get_running_loop()
        try:
            while (now := time.perf_counter()) < end:
                elapsed = now - start
                yielded = now
                for i, phase in enumerate(self.phases):
                    owed = int(elapsed * rate + phase) - self.issued[i]
                    while owed > 0 and not self.blocked[i]:
                        seq = self.issued[i]
                        self.issued[i] += 1
                        owed -= 1
                        self.issue_lag.append(
                            time.perf_counter() - start - (seq + 1 - phase) / rate
                        )
                        if blocking:
                            self.blocked[i] = True
                            task = loop.create_task(self._call(i, seq))
                            self._tasks.add(task)
                            task.add_done_callback(self._tasks.discard)
                        else:
                            await self.peer.append(i, delta_text(seq))
                            self._ack(i)
                    if time.perf_counter() - yielded >= _TICK:
                        await asyncio.sleep(0)
                        yielded = time.perf_counter()
                await asyncio.sleep(_TICK)
            return time.perf_counter() - start
        finally:
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _watch_lag(samples: list[float]) -> None:
    while True:
        before = time.perf_counter()
        await asyncio.sleep(_LAG_INTERVAL)
        samples.append(time.perf_counter() - before - _LAG_INTERVAL)


def _ms(values: Sequence[float], qs: Sequence[float]) -> list[float | None]:
    return [None if v is None else v * 1e3 for v in percentiles(values, qs)]


# -- the modes -------------------------------------------------------------------------------


async def run_cell(spec: PeerSpec) -> dict[str, Any]:
    """The cell's figures (see ``bench.peers`` for what each one means)."""
    peer = PEERS[spec.peer](spec)
    opened = time.perf_counter()
    await peer.open(create=True)
    try:
        driver = Driver(peer, spec)
        lag: list[float] = []
        before = await peer.bytes_mark()
        size_before = await peer.size_mark()
        monitor = asyncio.get_running_loop().create_task(_watch_lag(lag))
        warm_up = time.perf_counter() - opened
        try:
            window = await driver.run(spec.duration)
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        settled = time.perf_counter()
        await peer.settle()
        settle_s = time.perf_counter() - settled
        after = await peer.bytes_mark()
        size_after = await peer.size_mark()
        readable = await peer.readable()
        extra = await peer.extra()
        if isinstance(peer, RedisStreamPeer):
            await peer.drop()
    finally:
        await peer.close()
    staleness = driver.call_seconds if peer.blocking else peer.staleness
    accepted = sum(driver.issued)
    offered = spec.streams * spec.rate
    stale_p50, stale_p99, stale_max = _ms(staleness, (50, 99, 100))
    lag_p50, lag_p99 = _ms(driver.issue_lag, (50, 99))
    text_bytes = sum(
        len(delta_text(seq).encode()) for acked in driver.acked for seq in range(acked)
    )
    written = None if before is None or after is None else after - before
    return {
        "peer": spec.peer,
        "streams": spec.streams,
        "rate": spec.rate,
        "window_s": window,
        "warm_up_s": warm_up,
        "settle_s": settle_s,
        "offered_per_s": offered,
        "accepted": accepted,
        "accepted_per_s": accepted / window,
        "throughput_ratio": accepted / window / offered,
        "acknowledged": sum(driver.acked),
        "failures": driver.failures,
        "first_error": driver.first_error,
        "staleness_samples": len(staleness),
        "staleness_p50_ms": stale_p50,
        "staleness_p99_ms": stale_p99,
        "staleness_max_ms": stale_max,
        "issue_lag_p50_ms": lag_p50,
        "issue_lag_p99_ms": lag_p99,
        "loop_lag_p99_ms": _ms(lag, (99,))[0],
        "bytes_kind": peer.bytes_kind,
        "durable": peer.durable,
        "bytes_written": written,
        "text_bytes": text_bytes,
        "bytes_per_text_byte": written / text_bytes if written and text_bytes else None,
        "database_growth_bytes": (
            None if size_before is None or size_after is None else size_after - size_before
        ),
        "readable": sum(readable),
        "verified": readable == driver.acked,
        **extra,
    }


async def kill_target(spec: PeerSpec, counters_path: str) -> None:
    """Stream until killed, the acknowledged counts in ``counters_path``."""
    peer = PEERS[spec.peer](spec)
    await peer.open(create=True)
    driver = Driver(peer, spec, _map_counters(counters_path, spec.streams))
    print("streaming", flush=True)
    await driver.run(float("inf"))


def _map_counters(path: str, streams: int) -> memoryview:
    """The parent's file of ``streams`` int64, mapped shared: stores land in the page cache."""
    with open(path, "r+b") as handle:
        mapped = mmap.mmap(handle.fileno(), 8 * streams)
    return memoryview(mapped).cast("q")


async def count(spec: PeerSpec) -> dict[str, Any]:
    peer = PEERS[spec.peer](spec)
    await peer.open(create=False)
    try:
        readable = await peer.readable()
        if isinstance(peer, RedisStreamPeer):
            await peer.drop()
    finally:
        await peer.close()
    return {"readable": readable}


def main(argv: Sequence[str]) -> None:
    mode, spec_json, path = argv
    spec = PeerSpec.from_json(spec_json)
    if mode == "run":
        Path(path).write_text(json.dumps(asyncio.run(run_cell(spec))))
    elif mode == "kill":
        asyncio.run(kill_target(spec, path))
    elif mode == "count":
        Path(path).write_text(json.dumps(asyncio.run(count(spec))))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
