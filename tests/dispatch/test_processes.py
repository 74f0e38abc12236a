"""Real processes on one database: two dispatchers competing for the same sessions, and
dispatchers killed with SIGKILL while turns run and input waits.

Children are ``_dispatch_child.py serve`` (a store and a running ``Dispatcher``) that leave
evidence of every turn in an append-only file (see that module). The parent submits input
through a dispatcher it never starts (as a web worker would) and waits on the receipts, which
resolve from the database.

Competition (SQLite file and PostgreSQL): two children serve the same sessions while input
arrives in bursts. Never two turns of one session at once (by the children's monotonic
clocks: each turn's start comes after the previous one's end), and every input ran in
exactly one turn.

SIGKILL trials: a child serves bursts of input and is killed at a random moment, typically
with turns running and input pending. Then a dispatcher restarts (in the test process) and
runs until every receipt resolved. Every input either ran exactly once and completed, or was
consumed by a turn the kill cut off — that turn is repaired as interrupted and its inputs
end ``FAILED`` and are never run again; the cut-off replies get ``Finish(INTERRUPTED)`` from
the recovery sweep; the database passes its integrity checks and message counts match.

CI runs a few trials; ``pytest -m soak tests/dispatch/test_processes.py -s`` runs 40 on
SQLite and 15 on PostgreSQL and prints the figures. ``MESSAGESTORE_CRASH_SEED`` fixes the
random kill points.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from messagestore import (
    FinishReason,
    Message,
    Role,
    Store,
    open_store,
)
from messagestore._database._schema import messages, sessions
from messagestore._dispatch._tables import dispatch_inputs, dispatch_turns
from messagestore._feed._subscription import FeedSubscription
from messagestore._recovery._sweep import INTERRUPTED_MESSAGE, INTERRUPTED_TOOL_RESULT
from messagestore._store import StoreOptions, open_store_with
from messagestore.dispatch import (
    Dispatcher,
    QueueConfig,
    Receipt,
    Turn,
)
from tests.support.paths import SUPPORT

CHILD = SUPPORT / "dispatch_child.py"
SEED = int(os.environ.get("MESSAGESTORE_CRASH_SEED", random.randrange(1 << 30)))
CLAIM_TTL = 1.0
LEASE_TTL = 1.0
WAIT = 90.0
BIG = QueueConfig(cap=10_000)


@dataclass
class TurnRecord:
    turn_id: str
    session_id: str
    inputs: list[str]
    start: float
    end: float | None = None
    where: str = ""


def parse_evidence(path: Path, where: str) -> list[TurnRecord]:
    turns: dict[str, TurnRecord] = {}
    raw = path.read_bytes().decode() if path.exists() else ""
    for line in raw.split("\n")[:-1]:  # a line without its newline was cut by the kill
        kind, *rest = line.split(" ")
        if kind == "start":
            turn_id, session_id, ids, at = rest
            turns[turn_id] = TurnRecord(turn_id, session_id, ids.split(","), float(at), None, where)
        elif kind == "end":
            turns[rest[0]].end = float(rest[1])
    return list(turns.values())


@asynccontextmanager
async def serving(
    url: str, evidence: Path, *, turn_seconds: float, extra: tuple[str, ...] = ()
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A child serving the database; stopped gracefully on exit unless already killed."""
    args = [
        *(sys.executable, str(CHILD), "serve", "--url", url, "--evidence", str(evidence)),
        *("--turn-seconds", str(turn_seconds), "--claim-ttl", str(CLAIM_TTL)),
        *("--lease-ttl", str(LEASE_TTL)),
        *extra,
    ]
    pipe = subprocess.PIPE
    with subprocess.Popen(args, stdin=pipe, stdout=pipe, stderr=pipe) as proc:  # noqa: ASYNC220
        try:
            assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
            ready = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
            if ready != b"ready\n":
                proc.kill()
                err = await asyncio.to_thread(proc.stderr.read)
                pytest.fail(f"child did not start: {ready!r} {err.decode()[-2000:]}")
            yield proc
            if proc.poll() is None:
                proc.stdin.write(b"stop\n")
                proc.stdin.flush()
                await asyncio.to_thread(proc.wait, 60)
                if proc.returncode != 0:
                    err = await asyncio.to_thread(proc.stderr.read)
                    pytest.fail(f"child failed ({proc.returncode}): {err.decode()[-3000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait, 30)


async def bursts(
    web: Dispatcher, session_ids: list[str], rng: random.Random, count: int, gap: float
) -> list[Receipt]:
    """``count`` inputs in bursts of 1 to 4 to random sessions, ``gap`` seconds apart."""
    receipts: list[Receipt] = []
    while len(receipts) < count:
        session_id = rng.choice(session_ids)
        for _ in range(min(rng.randint(1, 4), count - len(receipts))):
            receipts.append(await web.submit(session_id, f"message {len(receipts)}"))
        await asyncio.sleep(rng.uniform(0, gap))
    return receipts


async def idle_turn(turn: Turn) -> None:
    raise AssertionError("the web worker's dispatcher never runs turns")


async def check_integrity(store: Store) -> None:
    async with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            assert (await conn.execute(text("PRAGMA integrity_check"))).all() == [("ok",)]
            assert (await conn.execute(text("PRAGMA foreign_key_check"))).all() == []
        counted = (
            select(func.count()).where(messages.c.session_id == sessions.c.id).scalar_subquery()
        )
        wrong = await conn.execute(select(sessions.c.id).where(sessions.c.message_count != counted))
        assert wrong.all() == [], "sessions.message_count disagrees with the stored rows"


# -- competition ---------------------------------------------------------------------------------


async def compete(url: str, tmp: Path, rng: random.Random) -> None:
    async with open_store(url) as store:
        session_ids = [(await store.sessions.create(f"s{i}")).id for i in range(5)]
        web = Dispatcher(store, idle_turn, BIG, poll_interval=0.05, claim_ttl=CLAIM_TTL)
        paths = [tmp / "a.txt", tmp / "b.txt"]
        async with (
            serving(url, paths[0], turn_seconds=0.08),
            serving(url, paths[1], turn_seconds=0.08),
        ):
            receipts = await bursts(web, session_ids, rng, 40, 0.08)
            async with asyncio.timeout(WAIT):
                outcomes = [await r.outcome() for r in receipts]
        turns = parse_evidence(paths[0], "a") + parse_evidence(paths[1], "b")
        await check_integrity(store)
    assert {str(o) for o in outcomes} == {"completed"}
    ran = Counter(i for t in turns for i in t.inputs)
    assert set(ran) == {r.id for r in receipts} and set(ran.values()) == {1}
    for session_id in session_ids:
        mine = sorted((t for t in turns if t.session_id == session_id), key=lambda t: t.start)
        for before, after in itertools.pairwise(mine):
            assert before.end is not None and after.start >= before.end, (
                f"seed {SEED}: turns {before.turn_id} ({before.where}) and "
                f"{after.turn_id} ({after.where}) of one session overlapped"
            )
    by = Counter(t.where for t in turns)
    print(f"compete seed={SEED} turns={len(turns)} by_process={dict(by)} inputs={len(ran)}")


async def test_two_processes_compete_for_the_same_sessions(db_url: str, tmp_path: Path) -> None:
    await compete(db_url, tmp_path, random.Random(f"{SEED}-compete"))


# -- a worker killed while the others stay up -------------------------------------------------

REPAIR_WAIT = 20.0  # seconds: far above LEASE_TTL plus one heartbeat, far below an hour


async def next_state(sub: FeedSubscription[Message], match: Callable[[Message], bool]) -> Message:
    """The next state the subscription delivers that ``match``es (bounded wait)."""
    async with asyncio.timeout(REPAIR_WAIT):
        while True:
            event = await sub.receive()
            if match(event.payload):
                return event.payload


async def test_a_killed_workers_reply_is_finished_while_every_process_stays_up(
    db_url: str, tmp_path: Path
) -> None:
    """A worker is SIGKILLed mid-turn while a second worker (a supervisor's restart, opened
    before the first's lease could expire) and this process stay up. The dead turn's input
    ends ``FAILED``, the next input runs, and the reply the dead worker was streaming gets
    ``Finish(INTERRUPTED)`` and its tool call an error result, from the surviving worker's
    background sweep: no store opens after the kill, and this process's own heartbeat (an hour
    away) never sweeps."""
    async with open_store_with(db_url, StoreOptions(lease_ttl=3600)) as store:
        session = await store.sessions.create("killed mid-turn")
        web = Dispatcher(store, idle_turn, BIG, poll_interval=0.05, claim_ttl=CLAIM_TTL)
        async with store.messages.subscribe(session_id=session.id) as sub:
            streaming = ("--tool-call", "--deltas", "600")
            async with serving(
                db_url, tmp_path / "dying.txt", turn_seconds=60, extra=streaming
            ) as dying:
                first = await web.submit(session.id, "cut off mid-reply")
                reply = await next_state(
                    sub, lambda m: m.role is Role.ASSISTANT and "w1 " in m.text
                )
                assert reply.tool_calls and not reply.is_finished
                async with serving(
                    db_url, tmp_path / "survivor.txt", turn_seconds=0.05
                ) as survivor:
                    dying.send_signal(signal.SIGKILL)
                    killed_at = time.monotonic()
                    await asyncio.to_thread(dying.wait, 30)
                    second = await web.submit(session.id, "after the kill")
                    fixed = await next_state(sub, lambda m: m.id == reply.id and m.is_finished)
                    print(
                        f"killed worker's reply finished {time.monotonic() - killed_at:.2f} s "
                        f"after the kill (lease {LEASE_TTL} s, heartbeat {LEASE_TTL / 3:.2f} s)"
                    )
                    async with asyncio.timeout(REPAIR_WAIT):
                        assert str(await first.outcome()) == "failed"
                        assert str(await second.outcome()) == "completed"
                    assert survivor.poll() is None, "the surviving worker went down"
        assert fixed.finish is not None and fixed.finish.reason is FinishReason.INTERRUPTED
        assert fixed.finish.message == INTERRUPTED_MESSAGE
        assert [c.finished for c in fixed.tool_calls] == [True]
        listed = await store.messages.list(session.id)
        answers = [r for m in listed for r in m.tool_results]
        assert [(r.tool_call_id, r.is_error) for r in answers] == [(fixed.tool_calls[0].id, True)]
        assert answers[0].content == INTERRUPTED_TOOL_RESULT
        replies = [m for m in listed if m.role is Role.ASSISTANT]
        assert all(m.is_finished for m in replies) and len(replies) == 2
        await check_integrity(store)


# -- SIGKILL ------------------------------------------------------------------------------------


@dataclass
class Figures:
    trials: int = 0
    inputs: int = 0
    ran_before_kill: int = 0
    cut_turns: int = 0
    failed_inputs: int = 0
    run_after_restart: int = 0
    trials_with_turn_in_flight: int = 0
    trials_with_pending: int = 0
    replies_interrupted: int = 0
    seconds_to_drain: list[float] = field(default_factory=list)

    def line(self, backend: str) -> str:
        worst = max(self.seconds_to_drain, default=0.0)
        return (
            f"dispatch-crash[{backend}] seed={SEED} trials={self.trials} inputs={self.inputs} "
            f"ran_before_kill={self.ran_before_kill} cut_turns={self.cut_turns} "
            f"failed_inputs={self.failed_inputs} run_after_restart={self.run_after_restart} "
            f"in_flight_at_kill={self.trials_with_turn_in_flight}/{self.trials} "
            f"pending_at_kill={self.trials_with_pending}/{self.trials} "
            f"replies_interrupted={self.replies_interrupted} worst_drain_s={worst:.2f}"
        )


async def crash_trial(url: str, tmp: Path, rng: random.Random, figures: Figures) -> None:
    evidence = tmp / f"crash-{figures.trials}.txt"
    restarted: list[TurnRecord] = []

    async def run_turn(turn: Turn) -> None:
        record = TurnRecord(turn.id, turn.session_id, [i.id for i in turn.inputs], time.monotonic())
        restarted.append(record)
        reply = await turn.reply(model="toy")
        reply.append_text("after the restart")
        reply.add_finish(FinishReason.END_TURN)
        await turn.store.messages.update(reply)
        record.end = time.monotonic()

    async with open_store(url) as store:
        session_ids = [(await store.sessions.create(f"s{i}")).id for i in range(4)]
        # The submitter's QueueConfig applies the cap: large enough that nothing is dropped.
        web = Dispatcher(store, idle_turn, BIG, poll_interval=0.05, claim_ttl=CLAIM_TTL)
        receipts: list[Receipt] = []
        stop = asyncio.Event()

        async def feed() -> None:
            while not stop.is_set():
                receipts.extend(await bursts(web, session_ids, rng, 3, 0.05))

        async with serving(url, evidence, turn_seconds=0.3) as child:
            feeder = asyncio.create_task(feed())
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            child.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            stop.set()
            await feeder
            await asyncio.to_thread(child.wait, 30)
            assert child.returncode == -signal.SIGKILL
        before = parse_evidence(evidence, "killed")
        config = QueueConfig(debounce=0.02, max_wait=0.2, cap=10_000)
        async with Dispatcher(store, run_turn, config, poll_interval=0.05, claim_ttl=CLAIM_TTL):
            async with asyncio.timeout(WAIT):
                outcomes = {r.id: str(await r.outcome()) for r in receipts}
        figures.seconds_to_drain.append(time.monotonic() - killed_at)
        async with store.engine.connect() as conn:
            of_trial = dispatch_turns.c.session_id.in_(session_ids)
            turn_of = dict(
                (await conn.execute(select(dispatch_inputs.c.id, dispatch_inputs.c.turn_id))).all()
            )
            rows = await conn.execute(
                select(
                    dispatch_turns.c.id, dispatch_turns.c.state, dispatch_turns.c.user_message_id
                ).where(of_trial)
            )
            turn_state, message_of = {}, {}
            for turn_id, state, message_id in rows.all():
                turn_state[turn_id] = state
                message_of[turn_id] = message_id
            user_ids = set(
                (
                    await conn.execute(select(messages.c.id).where(messages.c.role == "user"))
                ).scalars()
            )
        # Recovery: once the killed child's writer lease expired, its cut-off replies finish.
        await asyncio.sleep(LEASE_TTL + 0.1)
        report = await store.recover()
        figures.replies_interrupted += report.messages_interrupted
        for session_id in session_ids:
            for message in await store.messages.list(session_id):
                if message.role is Role.ASSISTANT:
                    assert message.is_finished, f"seed {SEED}: {message.id} left streaming"
        await check_integrity(store)

    where = f"seed {SEED}, trial {figures.trials}"
    figures.trials += 1
    figures.inputs += len(receipts)
    ran_before = Counter(i for t in before for i in t.inputs)
    ran_after = Counter(i for t in restarted for i in t.inputs)
    assert set(turn_state.values()) <= {"completed", "interrupted"}, f"{where}: {turn_state}"
    assert all(message_of[t] in user_ids for t in turn_state), f"{where}: a turn lost its message"
    cut = {t for t, s in turn_state.items() if s == "interrupted"}
    figures.cut_turns += len(cut)
    if any(t.end is None for t in before):
        figures.trials_with_turn_in_flight += 1
    for receipt in receipts:
        outcome = outcomes[receipt.id]
        runs = ran_before[receipt.id] + ran_after[receipt.id]
        assert runs <= 1, f"{where}: input {receipt.id} ran {runs} times"
        if outcome == "failed":
            # Consumed by a turn the kill cut off: repaired, never run again.
            figures.failed_inputs += 1
            assert turn_of[receipt.id] in cut and ran_after[receipt.id] == 0, where
        else:
            assert outcome == "completed", f"{where}: {receipt.id} ended {outcome}"
            assert runs == 1, f"{where}: completed input {receipt.id} never ran"
            assert turn_state[turn_of[receipt.id]] == "completed", where
        if ran_after[receipt.id]:
            figures.run_after_restart += 1
        elif ran_before[receipt.id]:
            figures.ran_before_kill += 1
    if any(ran_after[r.id] and not ran_before[r.id] for r in receipts):
        figures.trials_with_pending += 1


async def run_crash_trials(url: str, tmp: Path, backend: str, trials: int, fresh: bool) -> Figures:
    rng = random.Random(f"{SEED}-{backend}")
    figures = Figures()
    for n in range(trials):
        target = url if not fresh else f"sqlite+aiosqlite:///{tmp / f'crash-{n}.db'}"
        await crash_trial(target, tmp, rng, figures)
    print(figures.line(backend))
    return figures


async def test_sigkill_sqlite(tmp_path: Path) -> None:
    figures = await run_crash_trials("", tmp_path, "sqlite", 2, fresh=True)
    assert figures.inputs > 0


@pytest.mark.postgres
async def test_sigkill_postgres(postgres_url: str, tmp_path: Path) -> None:
    figures = await run_crash_trials(postgres_url, tmp_path, "postgres", 1, fresh=False)
    assert figures.inputs > 0


@pytest.mark.soak
async def test_sigkill_sqlite_soak(tmp_path: Path) -> None:
    figures = await run_crash_trials("", tmp_path, "sqlite", 40, fresh=True)
    assert figures.trials_with_turn_in_flight > 0 and figures.trials_with_pending > 0


@pytest.mark.soak
@pytest.mark.postgres
async def test_sigkill_postgres_soak(postgres_url: str, tmp_path: Path) -> None:
    figures = await run_crash_trials(postgres_url, tmp_path, "postgres", 15, fresh=False)
    assert figures.trials_with_turn_in_flight > 0 and figures.trials_with_pending > 0
