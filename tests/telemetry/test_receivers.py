"""A telemetry receiver that raises never starves the other receivers of the same signal, nor
breaks the write or the turn that sent it (blinker calls receivers in an undefined order and
stops at the first that raises; the store calls each on its own). SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from blinker import Signal

from messagestore import FinishReason, Role, Store, batch_written
from messagestore.dispatch import Dispatcher, QueueConfig, Turn, TurnOutcome, turn_started

WAIT = 20
FAST = QueueConfig(debounce=0.01, max_wait=0.5)
RAISING = 8  # with one counting receiver among 9, blinker alone would reach it 1 time in 9


def _raising(sender: object, **kw: Any) -> None:
    raise RuntimeError("telemetry exporter crashed")


@contextmanager
def _receivers(signal: Signal, counting: Callable[..., None]) -> Iterator[None]:
    raising = [lambda sender, **kw: _raising(sender, **kw) for _ in range(RAISING)]
    for receiver in [*raising[:4], counting, *raising[4:]]:
        signal.connect(receiver)
    try:
        yield
    finally:
        for receiver in [*raising, counting]:
            signal.disconnect(receiver)


async def test_every_receiver_of_a_write_signal_runs_when_others_raise(store: Store) -> None:
    rows: list[int] = []

    def counting(sender: object, **kw: Any) -> None:
        if sender is store.messages:
            rows.append(kw["rows"])

    session = await store.sessions.create("receivers")
    with _receivers(batch_written, counting):
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        for n in range(5):
            message.append_text(f"<{n}>")
            await store.messages.update(message)
            await store.messages.flush(message.id)
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)  # terminal: written before it returns
    assert len(rows) >= 6, rows
    stored = await store.messages.get(message.id)
    assert stored.parts == message.parts


async def test_every_receiver_of_a_turn_signal_runs_and_the_turn_completes(store: Store) -> None:
    started: list[str] = []

    def counting(sender: object, **kw: Any) -> None:
        started.append(kw["turn_id"])

    async def run_turn(turn: Turn) -> None:
        reply = await turn.reply()
        reply.append_text(f"re: {turn.text}")
        reply.add_finish(FinishReason.END_TURN)
        await turn.store.messages.update(reply)

    session = await store.sessions.create("turn receivers")
    with _receivers(turn_started, counting):
        async with Dispatcher(store, run_turn, FAST) as dispatcher:
            for n in range(3):
                receipt = await dispatcher.submit(session.id, f"hello {n}")
                outcome = await asyncio.wait_for(receipt.outcome(), WAIT)
                assert outcome is TurnOutcome.COMPLETED
    assert len(started) == 3
