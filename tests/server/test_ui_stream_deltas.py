"""The UI message stream built on deltas: ``UIStreamEncoder.update(state, delta)`` gives the
same chunks as ``encode(state)`` for every sequence of states, whatever delta comes with them
(following, merged over skipped states, from another base, none), and takes a delta that
follows from its appends alone, without comparing what was sent."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from messagestore import (
    FinishReason,
    Message,
    MessageDelta,
    Role,
    Text,
    ToolCall,
    ToolResult,
)
from messagestore.server._ui_stream import UIStreamEncoder

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def step(message: Message, rng: random.Random, n: int) -> None:
    """One random change of a reply, the way an agent loop makes them."""
    calls = message.tool_calls
    roll = rng.random()
    if roll < 0.35:
        message.append_text(rng.choice(["a", "bc ", "déf ", "\n", ""]))
    elif roll < 0.5:
        message.append_reasoning(rng.choice(["hmm ", "so", ""]))  # also once it ended
    elif roll < 0.55:
        message.finish_reasoning()
    elif roll < 0.6:
        message.add_tool_call(ToolCall(f"c{n}", "search", rng.choice(["", "{"])))
    elif roll < 0.75 and calls:
        call = rng.choice(calls)  # its input grows (also once finished), or is rewritten
        grown = call.input + rng.choice(['"q"', ": 1", "}", ""])
        if rng.random() < 0.1:
            grown = "[" + grown[::-1]
        finished = call.finished or rng.random() < 0.2
        message.add_tool_call(ToolCall(call.id, call.name, grown, finished=finished))
    elif roll < 0.8:
        message.add_tool_result(ToolResult(f"r{n}", "search", "found", is_error=n % 2 == 0))
    elif roll < 0.83:
        message.add_image_url(f"https://example.com/{n}.png")
    elif roll < 0.86:
        message.model = f"model-{n}"  # a field that is no part: a delta with only ``set``
    elif roll < 0.88 and message.parts and isinstance(message.parts[0], Text):
        message.parts[0] = Text("rewritten " + message.parts[0].text[::-1])  # not an append
    elif roll < 0.9:
        message.add_finish(rng.choice(list(FinishReason)))
    message.updated_at = message.updated_at + timedelta(milliseconds=1)


def states(seed: int, length: int) -> list[Message]:
    """A reply's successive states (each a new object, revisions increasing)."""
    rng = random.Random(seed)
    message = Message("m1", "s1", Role.ASSISTANT, [], "gpt", created_at=NOW, updated_at=NOW)
    message.revision = 1
    out = [message.clone()]
    for n in range(length):
        step(message, rng, n)
        message.revision += rng.randint(1, 3)
        out.append(message.clone())
        if message.is_finished:
            break
    return out


@pytest.mark.parametrize("seed", range(300))
def test_update_gives_what_encode_gives(seed: int) -> None:
    rng = random.Random(seed)
    sequence = states(seed, 80)
    whole, deltas = UIStreamEncoder("m1"), UIStreamEncoder("m1")
    assert deltas.update(sequence[0], None) == whole.encode(sequence[0])
    delivered = [sequence[0]]  # what the delta encoder was given, in order
    for state in sequence[1:]:
        if rng.random() < 0.3:
            continue  # skipped: a slow subscriber's conflated state
        roll = rng.random()
        delta: MessageDelta | None
        if roll < 0.8:
            delta = MessageDelta.between(delivered[-1], state)  # follows (maybe merged)
        elif roll < 0.9 and len(delivered) > 1:
            delta = MessageDelta.between(delivered[-2], state)  # from an older base
        else:
            delta = None
        expected = whole.encode(state)
        assert deltas.update(state, delta) == expected, (seed, state, delta)
        assert (deltas.done, deltas.broken) == (whole.done, whole.broken)
        delivered.append(state)


def test_merged_deltas_give_the_same_chunks() -> None:
    """The feed merges a slow subscriber's deltas (``merge``): such a delta works the same."""
    sequence = states(7, 60)
    whole, deltas = UIStreamEncoder("m1"), UIStreamEncoder("m1")
    deltas.update(sequence[0], None)
    whole.encode(sequence[0])
    base = sequence[0]
    for first, second in zip(sequence[1::2], sequence[2::2], strict=False):
        one = MessageDelta.between(base, first)
        two = MessageDelta.between(first, second)
        merged = one.merge(two) if one is not None and two is not None else None
        assert deltas.update(second, merged) == whole.encode(second)
        base = second


class Uncomparable(str):
    """A string that fails the test when it is compared or searched."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        raise AssertionError("compared")

    def __ne__(self, other: object) -> bool:
        raise AssertionError("compared")

    def startswith(self, *args: Any) -> bool:
        raise AssertionError("compared")


def test_a_following_delta_is_taken_from_its_appends_alone() -> None:
    def at(revision: int, text: str, thinking: str, call_input: str) -> Message:
        parts: list[Any] = [Text(text), ToolCall("c1", "search", call_input)]
        message = Message("m1", "s1", Role.ASSISTANT, parts, created_at=NOW, updated_at=NOW)
        message.append_reasoning(thinking)
        message.revision = revision
        return message

    encoder = UIStreamEncoder("m1")
    encoder.encode(at(1, "hello", "hm", '{"q"'))
    grown = at(2, Uncomparable("hello world"), Uncomparable("hmm"), Uncomparable('{"q": 1}'))
    delta = MessageDelta("m1", 1, 2, append={0: " world", 1: ": 1}", 2: "m"})
    assert encoder.update(grown, delta) == [
        {"type": "text-delta", "id": "text", "delta": " world"},
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": ": 1}"},
        {"type": "reasoning-delta", "id": "reasoning", "delta": "m"},
    ]
    comparing = UIStreamEncoder("m1")  # the same states through encode: it compares
    comparing.encode(at(1, "hello", "hm", '{"q"'))
    with pytest.raises(AssertionError, match="compared"):
        comparing.encode(grown)
    # A delta from another base goes through encode, which compares (and so, here, fails).
    later = at(3, Uncomparable("hello world!"), "hmm", '{"q": 1}')
    with pytest.raises(AssertionError, match="compared"):
        encoder.update(later, MessageDelta("m1", 1, 3, append={0: " world!"}))
