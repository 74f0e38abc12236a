"""A hypothesis model test of the whole dispatcher on a real SQLite file.

Random sequences of submit / complete / fail / stop / cancel_one / cancel_all / reset / poll /
wait, in every queue mode and drop policy, against a real ``Dispatcher``; turns are held by
the test until it completes or fails them. Afterwards everything still running is let go, and:

* every receipt resolved exactly once, to the state the database recorded for its input;
* no input ran in two turns; an input ``COMPLETED`` or ``FAILED`` ran in exactly one turn,
  and one ``DROPPED`` or ``STALE`` in none;
* two turns of one session and one generation never ran at once (more than
  ``max_concurrent``);
* nothing is left pending or running in the database.

The state machine alone has its own model test (``test_dispatch_machine.py``); this one
checks the driver, the transactions and the receipts around it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from messagestore import QueueFull, open_store
from messagestore._dispatch._tables import dispatch_inputs
from messagestore.dispatch import (
    Dispatcher,
    DropPolicy,
    QueueConfig,
    QueueMode,
    Receipt,
    Turn,
    TurnOutcome,
)
from messagestore.testing import poll_now
from tests.support.dispatch_helpers import WAIT

SESSIONS = ("a", "b")

op = st.one_of(
    st.tuples(
        st.sampled_from(["submit", "submit", "complete", "fail", "stop"]), st.sampled_from(SESSIONS)
    ),
    st.tuples(st.sampled_from(["cancel_one", "cancel_all"]), st.sampled_from(SESSIONS)),
    st.tuples(st.sampled_from(["reset", "poll", "wait"]), st.just("")),
)
configs = st.builds(
    lambda mode, drop, concurrent: QueueConfig(
        mode=mode,
        debounce=0.005,
        max_wait=0.05,
        cap=3,
        drop=drop,
        max_concurrent=concurrent if mode is QueueMode.QUEUE else 1,
    ),
    st.sampled_from([QueueMode.COLLECT, QueueMode.QUEUE, QueueMode.INTERRUPT]),
    st.sampled_from(list(DropPolicy)),
    st.integers(1, 2),
)


class HeldAgent:
    """Holds every turn until the test completes or fails it (or ``let_go`` is set)."""

    def __init__(self) -> None:
        self.holds: dict[str, list[asyncio.Future[bool]]] = {s: [] for s in SESSIONS}
        self.by_session: dict[str, str] = {}
        self.inputs_seen: Counter[str] = Counter()
        self.returned: set[str] = set()  # input ids of turns that returned normally
        self.live: Counter[tuple[str, int]] = Counter()
        self.peak: Counter[tuple[str, int]] = Counter()
        self.let_go = False

    async def __call__(self, turn: Turn) -> None:
        name = self.by_session[turn.session_id]
        slot = (name, turn.generation)
        self.live[slot] += 1
        self.peak[slot] = max(self.peak[slot], self.live[slot])
        for i in turn.inputs:
            self.inputs_seen[i.id] += 1
        try:
            if not self.let_go:
                hold: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self.holds[name].append(hold)
                ok = await hold
                if not ok:
                    raise RuntimeError("the agent failed")
            self.returned.update(i.id for i in turn.inputs)
        finally:
            self.live[slot] -= 1

    def settle(self, name: str, ok: bool) -> None:
        holds = self.holds[name]
        while holds:
            hold = holds.pop(0)
            if not hold.done():
                hold.set_result(ok)
                return

    def release_all(self) -> None:
        self.let_go = True
        for name in SESSIONS:
            while self.holds[name]:
                self.settle(name, True)


async def scenario(url: str, config: QueueConfig, ops: list[tuple[str, str]]) -> None:
    agent = HeldAgent()
    receipts: list[Receipt] = []
    async with open_store(url) as store:
        ids = {}
        for name in SESSIONS:
            session = await store.sessions.create(name)
            ids[name] = session.id
            agent.by_session[session.id] = name
        async with Dispatcher(store, agent, config, poll_interval=0.05, claim_ttl=2.0) as d:
            for n, (kind, name) in enumerate(ops):
                sid = ids.get(name, "")
                if kind == "submit":
                    try:
                        receipts.append(await d.submit(sid, f"input {n}"))
                    except QueueFull as full:
                        receipts.append(full.receipt)
                elif kind in ("complete", "fail"):
                    agent.settle(name, kind == "complete")
                elif kind == "stop":
                    await d.stop(sid)
                elif kind == "cancel_one":
                    await d.cancel_one(sid)
                elif kind == "cancel_all":
                    await d.cancel_all(sid)
                elif kind == "reset":
                    await d.reset()
                elif kind == "poll":
                    await poll_now(d)
                await asyncio.sleep(0.01 if kind == "wait" else 0)
            agent.release_all()
            async with asyncio.timeout(WAIT):
                for receipt in receipts:
                    await receipt.outcome()
        async with store.engine.connect() as conn:
            rows = dict(
                (await conn.execute(select(dispatch_inputs.c.id, dispatch_inputs.c.state))).all()
            )
    for receipt in receipts:
        outcome = receipt.result()
        assert receipt.resolutions == 1
        seen = agent.inputs_seen[receipt.id]
        assert seen <= 1, f"{receipt.id} ran {seen} times"
        if outcome is TurnOutcome.REJECTED:
            assert receipt.id not in rows
            continue
        assert rows[receipt.id] == outcome.value, (receipt, rows[receipt.id])
        if outcome in (TurnOutcome.COMPLETED, TurnOutcome.FAILED):
            assert seen == 1
        if outcome is TurnOutcome.COMPLETED:
            assert receipt.id in agent.returned
        if outcome in (TurnOutcome.DROPPED, TurnOutcome.STALE):
            assert seen == 0
    assert not {s for s in rows.values() if s in ("pending", "running")}
    assert max(agent.peak.values(), default=0) <= config.max_concurrent


@settings(
    max_examples=int(os.environ.get("MESSAGESTORE_MODEL_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
@given(config=configs, ops=st.lists(op, max_size=24))
def test_random_sequences_keep_every_guarantee(
    config: QueueConfig, ops: list[tuple[str, str]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'model.db'}"
        asyncio.run(scenario(url, config, ops))
