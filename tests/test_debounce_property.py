"""Property: any interleaving of update / flush / flush_all / delete keeps the update contract.

Hypothesis draws a program of operations over a few messages. It runs against a real store with
a short debounce, so timer-fired writes really are in flight while later operations (updates,
flushes, deletes) arrive. Afterwards:

* the database equals the last accepted state of every live message, and deleted ones are gone;
* per message, events arrive in write order (the streamed text only grows, so a later event
  never carries shorter text) and the last one carries the final state;
* nothing follows a message's ``DELETED`` event.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messagestore import (
    FinishReason,
    Message,
    MessageNotFound,
    Part,
    Role,
    ToolCall,
    open_store,
)
from pubsub import Event, EventType

MESSAGES = 3


@dataclass(frozen=True)
class Op:
    kind: str
    target: int = 0
    text: str = ""
    pause: float = 0.0


ops = st.one_of(
    st.builds(Op, st.just("delta"), st.integers(0, MESSAGES - 1), st.text(min_size=1, max_size=5)),
    st.builds(Op, st.just("tool_call"), st.integers(0, MESSAGES - 1)),
    st.builds(Op, st.just("finish"), st.integers(0, MESSAGES - 1)),
    st.builds(Op, st.just("flush"), st.integers(0, MESSAGES - 1)),
    st.builds(Op, st.just("flush_all")),
    st.builds(Op, st.just("delete"), st.integers(0, MESSAGES - 1)),
    st.builds(Op, st.just("pause"), pause=st.sampled_from([0.0, 0.002, 0.01, 0.03])),
)


class Program:
    """Runs ops against the store and keeps the model of what was accepted."""

    def __init__(self, store: object, messages: list[Message]) -> None:
        self.store = store
        self.messages = messages
        self.accepted: dict[str, list[Part]] = {m.id: list(m.parts) for m in messages}
        self.deleted: set[str] = set()
        self.calls = 0

    async def run(self, op: Op) -> None:
        message = self.messages[op.target]
        messages = self.store.messages  # type: ignore[attr-defined]
        if op.kind == "pause":
            await asyncio.sleep(op.pause)
        elif op.kind == "flush_all":
            await messages.flush_all()
        elif message.id in self.deleted:
            return
        elif op.kind == "flush":
            await messages.flush(message.id)
        elif op.kind == "delete":
            await messages.delete(message.id)
            self.deleted.add(message.id)
        else:
            self._mutate(message, op)
            await messages.update(message)
            self.accepted[message.id] = list(message.parts)

    def _mutate(self, message: Message, op: Op) -> None:
        self.calls += 1
        if op.kind == "delta":
            message.append_text(op.text)
        elif op.kind == "tool_call":
            message.add_tool_call(ToolCall(f"call-{self.calls}", "tool"))
        else:
            message.add_finish(FinishReason.END_TURN)


async def _scenario(url: str, program_ops: list[Op]) -> None:
    async with open_store(url, debounce=0.005) as store:
        session = await store.sessions.create("property")
        messages = [
            await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(MESSAGES)
        ]
        async with store.messages.subscribe(buffer_size=10_000) as sub:
            program = Program(store, messages)
            for op in program_ops:
                await program.run(op)
            await store.messages.flush_all()
            events = []
            while sub.queued:
                events.append(sub.receive_nowait())
        for message in messages:
            if message.id in program.deleted:
                try:
                    await store.messages.get(message.id)
                except MessageNotFound:
                    continue
                raise AssertionError(f"deleted message {message.id} came back")
            stored = await store.messages.get(message.id)
            assert stored.parts == program.accepted[message.id]
        _check_event_order(events, program)


def _check_event_order(events: list[Event[Message]], program: Program) -> None:
    by_id: dict[str, list[Event[Message]]] = {}
    for event in events:
        by_id.setdefault(event.payload.id, []).append(event)
    for message_id, own in by_id.items():
        if EventType.DELETED in [e.type for e in own]:
            assert own[-1].type is EventType.DELETED, f"event after DELETED for {message_id}"
            assert [e.type for e in own].count(EventType.DELETED) == 1
            own = own[:-1]
        texts = [e.payload.text for e in own if e.type is EventType.UPDATED]
        for earlier, later in itertools.pairwise(texts):
            assert later.startswith(earlier), f"events out of write order for {message_id}"
        updates = [e for e in own if e.type is EventType.UPDATED]
        if message_id not in program.deleted and updates:
            assert updates[-1].payload.parts == program.accepted[message_id]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program_ops=st.lists(ops, min_size=1, max_size=30))
def test_any_interleaving_keeps_the_contract(db_url: str, program_ops: list[Op]) -> None:
    asyncio.run(asyncio.wait_for(_scenario(db_url, program_ops), 60))
