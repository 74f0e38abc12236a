"""Two OS processes on one database, on an SQLite file and on PostgreSQL: one streams many messages
(``tests/support/feed_child.py stream``), the other subscribes (``... subscribe``) and leaves one
evidence line per event it received.

* A subscriber that runs throughout receives every message's final state, in revision order,
  nothing after ``DELETED``.
* A subscriber killed with SIGKILL at random moments and restarted from its last
  ``Subscription.revision``: together its incarnations missed nothing and received no state
  twice (``tests.support.feed_helpers.check_ledger``).
* PostgreSQL: the subscriber's LISTEN connection, killed with ``pg_terminate_backend`` again
  and again mid-stream, loses nothing: the store reconnects and reads what committed meanwhile.

CI sizes keep the module to a few seconds per backend; ``-m soak`` runs longer streams with
more kills.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from messagestore import Role, open_store
from pubsub import EventType
from tests.support.feed_helpers import (
    WAIT,
    Ledger,
    Received,
    check_ledger,
    database_truth,
    follow,
    stream,
)
from tests.support.paths import ROOT
from tests.support.processes import Processes

CHILD = "tests.support.feed_child"


async def _start(
    processes: Processes, *args: str, stdin: int | None = None
) -> asyncio.subprocess.Process:
    """The child, owned by ``processes`` (ended after the test whatever happened)."""
    return await processes.exec(
        sys.executable,
        "-m",
        CHILD,
        *args,
        cwd=ROOT,
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _line(process: asyncio.subprocess.Process) -> str:
    """The child's next stdout line (bounded); its stderr if it died instead."""
    assert process.stdout is not None
    async with asyncio.timeout(WAIT):
        line = await process.stdout.readline()
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"child ended early: {(await process.stderr.read()).decode()}")
    return line.decode().strip()


async def _finish(process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(WAIT):
        _out, err = await process.communicate()
    assert process.returncode == 0, err.decode()


async def _kill(process: asyncio.subprocess.Process) -> None:
    process.kill()  # SIGKILL: no close, no flush, no finally
    await process.wait()


@dataclass
class Incarnation:
    """What one subscriber process wrote: its events, in order, and its resume points."""

    received: list[Received]
    resumes: list[int]


def _read_evidence(path: Path) -> Incarnation:
    received, resumes = [], []
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut by the kill (cannot happen with one write, but never trust it)
            _e, message_id, revision, kind, resume = line.split()
            received.append(Received(message_id, int(revision), EventType(kind)))
            resumes.append(int(resume))
    return Incarnation(received, resumes)


def _check_incarnation(incarnation: Incarnation) -> None:
    """One process received revisions in order, and each resume point covers its event."""
    revisions = [r.revision for r in incarnation.received]
    assert revisions == sorted(set(revisions)), "one subscriber's revisions went back"
    for event, resume in zip(incarnation.received, incarnation.resumes, strict=True):
        assert resume >= event.revision


async def _migrated(url: str) -> None:
    async with open_store(url):
        pass


def _stream_args(url: str, *, messages: int, seed: int, pause: float = 0.004) -> list[str]:
    return [
        "stream",
        "--url",
        url,
        "--messages",
        str(messages),
        "--seed",
        str(seed),
        "--pause",
        str(pause),
    ]


async def _until_counter(url: str) -> int:
    return (await database_truth(url)).counter


# -- a subscriber that runs throughout -----------------------------------------------------


async def test_another_process_receives_every_final_state(
    db_url: str, tmp_path: Path, processes: Processes
) -> None:
    """Two subscriber processes run throughout: a quick one, and a slow one (room for 2
    events, 3 ms per event). Both end on every message's final state, in revision order."""
    await _migrated(db_url)
    setups = {"quick": [], "slow": ["--buffer", "2", "--delay", "0.003"]}
    subscribers = {}
    for name, extra in setups.items():
        subscribers[name] = await _start(
            processes,
            "subscribe",
            "--url",
            db_url,
            "--since",
            "0",
            "--evidence",
            str(tmp_path / f"{name}.txt"),
            *extra,
            stdin=asyncio.subprocess.PIPE,
        )
    try:
        for subscriber in subscribers.values():
            assert await _line(subscriber) == "subscribed"
        streamer = await _start(processes, *_stream_args(db_url, messages=6, seed=1))
        assert (await _line(streamer)).startswith("ready ")
        assert await _line(streamer) == "done"
        await _finish(streamer)
        counter = await _until_counter(db_url)
        for subscriber in subscribers.values():
            assert subscriber.stdin is not None
            subscriber.stdin.write(f"until {counter}\n".encode())
            subscriber.stdin.close()
        for subscriber in subscribers.values():
            await _finish(subscriber)
    finally:
        for subscriber in subscribers.values():
            if subscriber.returncode is None:
                await _kill(subscriber)
    truth = await database_truth(db_url)
    for name in setups:
        incarnation = _read_evidence(tmp_path / f"{name}.txt")
        _check_incarnation(incarnation)
        check_ledger(incarnation.received, truth)
        assert any(r.type is EventType.DELETED for r in incarnation.received)
    quick = _read_evidence(tmp_path / "quick.txt")
    assert len(quick.received) > 18  # more than one event per message: it was live


# -- a subscriber killed and resumed -----------------------------------------------------------


async def _killed_and_resumed(
    processes: Processes,
    url: str,
    tmp_path: Path,
    *,
    messages: int,
    kills: int,
    seed: int,
    tag: str = "",
) -> int:
    """Stream in one process while a subscriber is SIGKILLed at random moments and resumed
    from its last resume point; then check what all incarnations received. Returns the
    number of incarnations."""
    await _migrated(url)
    rng = random.Random(seed)
    # Slow enough (about 4 s for 10 messages) for several kills while it streams.
    streamer = await _start(processes, *_stream_args(url, messages=messages, seed=seed, pause=0.03))
    assert (await _line(streamer)).startswith("ready ")
    incarnations: list[Incarnation] = []
    since = 0
    try:
        while streamer.returncode is None and len(incarnations) < kills:
            path = tmp_path / f"{tag}incarnation-{len(incarnations)}.txt"
            subscriber = await _start(
                processes, "subscribe", "--url", url, "--since", str(since), "--evidence", str(path)
            )
            try:
                assert await _line(subscriber) == "subscribed"
                await asyncio.sleep(rng.uniform(0.05, 0.8))
            finally:
                await _kill(subscriber)
            incarnation = _read_evidence(path)
            incarnations.append(incarnation)
            if incarnation.resumes:
                since = incarnation.resumes[-1]
        assert await _line(streamer) == "done"
        await _finish(streamer)
    finally:
        if streamer.returncode is None:
            await _kill(streamer)
    path = tmp_path / f"{tag}final.txt"
    final = await _start(
        processes,
        "subscribe",
        "--url",
        url,
        "--since",
        str(since),
        "--until",
        str(await _until_counter(url)),
        "--evidence",
        str(path),
    )
    assert await _line(final) == "subscribed"
    await _finish(final)
    incarnations.append(_read_evidence(path))
    print("events per incarnation:", [len(i.received) for i in incarnations])
    for incarnation in incarnations:
        _check_incarnation(incarnation)
    received = [r for incarnation in incarnations for r in incarnation.received]
    check_ledger(received, await database_truth(url))
    return len(incarnations)


async def test_a_killed_subscriber_resumes_without_gap_or_repeat(
    db_url: str, tmp_path: Path, processes: Processes
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    count = await _killed_and_resumed(processes, db_url, tmp_path, messages=10, kills=4, seed=seed)
    assert count >= 3  # at least two killed while the stream went on, and the last one


@pytest.mark.soak
async def test_a_killed_subscriber_resumes_soak(
    db_url: str, tmp_path: Path, processes: Processes
) -> None:
    for round_ in range(5):
        seed = random.randrange(1 << 30)
        print(f"round {round_} seed {seed}")
        url = db_url
        if db_url.startswith("sqlite"):
            url = f"sqlite+aiosqlite:///{tmp_path / f'round-{round_}.db'}"
        else:
            await _drop_tables(db_url)
        await _killed_and_resumed(
            processes, url, tmp_path, messages=40, kills=25, seed=seed, tag=f"round-{round_}-"
        )


async def _drop_tables(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            names = (
                await conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
            quoted = ", ".join(f'"{n}"' for n in names)
            if quoted:
                await conn.execute(text(f"DROP TABLE {quoted} CASCADE"))
    finally:
        await engine.dispose()


# -- PostgreSQL: the LISTEN connection killed ------------------------------------------------


async def _listeners(admin: AsyncConnection) -> set[int]:
    rows = await admin.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query ILIKE 'LISTEN%'"
        )
    )
    return set(rows.scalars())


async def _terminate(admin: AsyncConnection, pids: set[int]) -> None:
    for pid in pids:
        await admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})


async def _new_listener(admin: AsyncConnection, old: set[int]) -> set[int]:
    """Wait (bounded) until a LISTEN connection other than ``old`` is up; return it."""
    async with asyncio.timeout(WAIT):  # the server's state: polled, there is no event for it
        while True:
            pids = await _listeners(admin) - old
            if pids:
                return pids
            await asyncio.sleep(0.02)


@pytest.mark.postgres
async def test_postgres_listen_connection_killed_mid_stream_loses_nothing(
    postgres_url: str,
) -> None:
    """The watching store's LISTEN connection is terminated again and again while another
    store (its commits reach the watcher only through the database) streams; the last commit
    lands while no listener is up. The watcher still ends on every final state."""
    admin_engine = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    async with (
        open_store(postgres_url) as writer,
        open_store(postgres_url) as watcher,
        admin_engine.connect() as admin,
    ):
        session = await writer.sessions.create("listen")
        sub = watcher.messages.subscribe(session_id=session.id, since=0)
        listener = await _new_listener(admin, set())
        rng = random.Random(5)
        streaming = asyncio.create_task(
            stream(writer, session.id, messages=12, deltas=20, rng=rng, delete_every=4)
        )
        ledger = Ledger()
        following = asyncio.create_task(follow(sub, ledger, until=1 << 62))
        for _ in range(3):  # mid-stream: later commits may also tell the watcher
            await asyncio.sleep(rng.uniform(0.1, 0.3))
            await _terminate(admin, listener)
            listener = await _new_listener(admin, listener)
        await streaming
        # The last commit lands while no listener is up, and nothing commits after it: only
        # the catch-up after the reconnect can deliver it.
        for _ in range(10):
            await _terminate(admin, listener)
            end = await writer.messages.create(session.id, role=Role.USER)
            deaf = not await _listeners(admin) - listener
            listener = await _new_listener(admin, listener)
            if deaf:
                break
        else:
            pytest.fail("the watcher reconnected before every commit: nothing was proved")
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await follow(sub, ledger, until=end.revision)
        sub.close()
        check_ledger(ledger.received, await database_truth(postgres_url, session.id))
        assert ledger.last[end.id].revision == end.revision
    await admin_engine.dispose()


# -- nothing listens or polls without a subscriber ------------------------------------------------


async def test_nothing_listens_or_polls_while_nobody_subscribes(db_url: str) -> None:
    """The store hears other processes only while a feed subscription exists: PostgreSQL has a
    LISTEN connection then (and not before or after), SQLite polls the counter then (and not
    before or after). A subscription dropped without ``close()`` ends it too."""
    postgres = db_url.startswith("postgresql")
    admin_engine = create_async_engine(db_url, isolation_level="AUTOCOMMIT")
    async with open_store(db_url) as store, admin_engine.connect() as admin:
        reads = 0
        read_counter = store._repository.read_counter

        async def counted() -> tuple[int, int]:
            nonlocal reads
            reads += 1
            return await read_counter()

        store._repository.read_counter = counted  # type: ignore[method-assign]

        async def quiet() -> None:
            """No listener task; no LISTEN connection; no counter read for 8 poll intervals."""
            assert store._feed._listener is None
            if postgres:
                async with asyncio.timeout(WAIT):  # the closed connection leaves the server
                    while True:
                        if not await _listeners(admin):
                            break
                        await asyncio.sleep(0.02)
            before = reads
            await asyncio.sleep(0.2)
            assert reads == before

        await quiet()
        sub = store.messages.subscribe()
        await store._feed.activated()
        if postgres:
            await _new_listener(admin, set())
        else:
            started = reads
            await asyncio.sleep(0.2)
            assert reads > started + 2  # polling while subscribed
        sub.close()
        await asyncio.gather(*store._feed._stopping, return_exceptions=True)  # stopped
        await quiet()

        dropped = store.messages.subscribe()
        await store._feed.activated()
        del dropped  # never closed: its finalizer detaches it
        gc.collect()
        await asyncio.gather(*store._feed._stopping, return_exceptions=True)
        await quiet()
    await admin_engine.dispose()
