"""Shared pieces of the dispatcher tests: a controllable agent and table reads."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sqlalchemy import func, select

from messagestore import FinishReason, Store
from messagestore._dispatch._tables import dispatch_inputs, dispatch_turns
from messagestore.dispatch import Turn

WAIT = 15.0  # seconds: the bound of every wait in these tests


class Agent:
    """A ``run_turn`` that records every turn and can be held until ``release()``.

    Each turn creates its reply, streams one word, then waits on the gate (open by default
    when ``hold`` is False) and finishes. ``started`` yields turns as they start.
    """

    def __init__(self, *, hold: bool = False, fail_on: str | None = None) -> None:
        self.turns: list[Turn] = []
        self.started: asyncio.Queue[Turn] = asyncio.Queue()
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.fail_on = fail_on
        self.active: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.total_active = 0
        self.total_peak = 0
        self.cancelled: list[Turn] = []

    async def __call__(self, turn: Turn) -> None:
        self.turns.append(turn)
        self.active[turn.session_id] += 1
        self.total_active += 1
        self.peak[turn.session_id] = max(self.peak[turn.session_id], self.active[turn.session_id])
        self.total_peak = max(self.total_peak, self.total_active)
        try:
            reply = await turn.reply(model="toy")
            self.started.put_nowait(turn)
            if self.fail_on is not None and self.fail_on in turn.text:
                raise RuntimeError(f"agent failed on {turn.text!r}")
            reply.append_text(f"reply to {turn.text!r}")
            await turn.store.messages.update(reply)
            await self.gate.wait()
            reply.add_finish(FinishReason.END_TURN)
            await turn.store.messages.update(reply)
        except asyncio.CancelledError:
            self.cancelled.append(turn)
            raise
        finally:
            self.active[turn.session_id] -= 1
            self.total_active -= 1

    async def next_turn(self) -> Turn:
        return await asyncio.wait_for(self.started.get(), WAIT)

    def release(self) -> None:
        self.gate.set()

    def texts(self, session_id: str | None = None) -> list[str]:
        return [t.text for t in self.turns if session_id is None or t.session_id == session_id]


async def input_count(store: Store, state: str | None = None) -> int:
    query = select(func.count()).select_from(dispatch_inputs)
    if state is not None:
        query = query.where(dispatch_inputs.c.state == state)
    async with store.engine.connect() as conn:
        value: int = (await conn.execute(query)).scalar_one()
    return value


async def turn_states(store: Store, session_id: str) -> list[str]:
    query = (
        select(dispatch_turns.c.state)
        .where(dispatch_turns.c.session_id == session_id)
        .order_by(dispatch_turns.c.started_at)
    )
    async with store.engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def outcomes(*receipts: Any) -> list[str]:
    """Every receipt's outcome, each wait bounded."""
    return [str(await asyncio.wait_for(r.outcome(), WAIT)) for r in receipts]
