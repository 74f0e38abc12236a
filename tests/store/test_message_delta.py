"""Message deltas: what ``between`` sends for each kind of change, that applying it (in Python,
by the JSON rules, and with the web page's delta.js) gives the new state exactly, and what
``apply`` and ``from_json`` refuse."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messagestore import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    Message,
    MessageDelta,
    Reasoning,
    Role,
    Text,
    ToolCall,
    ToolResult,
    open_store,
)
from messagestore._growth import diff, grown
from messagestore._message_json import message_from_json, message_json
from messagestore.server import create_app
from tests.support.paths import ROOT, SUPPORT

DELTA_JS = ROOT / "messagestore" / "server" / "static" / "delta.js"
CHECK_JS = SUPPORT / "delta_check.cjs"
NODE = shutil.which("node")
T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))
GROWING = {"text": "text", "reasoning": "thinking", "tool_call": "input"}


def _message(*parts: Any, revision: int = 7, **fields: Any) -> Message:
    values: dict[str, Any] = {
        "id": "m1",
        "session_id": "s1",
        "role": Role.ASSISTANT,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Message(parts=list(parts), revision=revision, **values)


def _next(message: Message, change: Callable[[Message], None], *, seconds: int = 1) -> Message:
    """``message`` changed by ``change``, one second later, at the next revision."""
    new = message.clone()
    change(new)
    new.updated_at = message.updated_at + timedelta(seconds=seconds)
    new.revision = message.revision + 1
    return new


def _all_fields(message: Message) -> tuple[Any, ...]:
    """Every field, the revision too (equality leaves it out), timestamps with their offsets."""
    values = tuple(getattr(message, f.name) for f in dataclasses.fields(message))
    return (*values, message_json(message))


def _wire(value: Any) -> Any:
    """``value`` as a client reads it off the wire (one JSON round trip).

    JSON cannot tell two lone surrogate escapes from the character they pair into, so a text
    that ends in a lone high surrogate and grows by a low one reads the same either way.
    """
    return json.loads(json.dumps(value))


def apply_json(message: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The JSON rules, written plainly from the documented format (a reference for delta.js)."""
    if message["revision"] != delta["base"]:
        raise ValueError("wrong base")
    parts = list(message["parts"])
    for key, text in delta.get("append", {}).items():
        part = parts[int(key)]
        field = GROWING[part["type"]]
        parts[int(key)] = {**part, "data": {**part["data"], field: part["data"][field] + text}}
    for key in sorted(delta.get("parts", {}), key=int):
        index = int(key)
        assert index <= len(parts)
        if index == len(parts):
            parts.append(delta["parts"][key])
        else:
            parts[index] = delta["parts"][key]
    return {**message, "parts": parts, **delta.get("set", {}), "revision": delta["revision"]}


# -- what between sends, rule by rule ---------------------------------------------------------


def test_grown_text_is_an_append_and_the_new_time_a_set() -> None:
    old = _message(Text("Hello"))
    new = _next(old, lambda m: m.append_text(", world"))
    delta = MessageDelta.between(old, new)
    assert delta is not None
    assert delta.to_json() == {
        "id": "m1",
        "base": 7,
        "revision": 8,
        "append": {"0": ", world"},
        "set": {"updated_at": new.updated_at.isoformat()},
    }
    assert _all_fields(delta.apply(old)) == _all_fields(new)


def test_only_a_new_revision_is_id_base_and_revision() -> None:
    old = _message(Text("same"))
    new = old.clone()
    new.revision = 9
    delta = MessageDelta.between(old, new)
    assert delta is not None
    assert delta.to_json() == {"id": "m1", "base": 7, "revision": 9}
    assert _all_fields(delta.apply(old)) == _all_fields(new)


def test_growing_reasoning_is_an_append_but_ended_reasoning_is_sent_whole() -> None:
    old = _message(Reasoning("Let me", started_at=T0))
    growing = _next(old, lambda m: m.append_reasoning(" think"))
    delta = MessageDelta.between(old, growing)
    assert delta is not None and delta.append == {0: " think"} and not delta.parts

    def end(m: Message) -> None:
        m.append_reasoning(".")
        m.parts[0] = dataclasses.replace(m.parts[0], finished_at=T0)  # type: ignore[type-var]

    ended = _next(growing, end)
    delta = MessageDelta.between(growing, ended)
    assert delta is not None
    assert not delta.append
    assert delta.parts == {0: ended.parts[0]}
    assert _all_fields(delta.apply(growing)) == _all_fields(ended)


def test_tool_input_grows_by_appends_and_a_finished_call_is_sent_whole() -> None:
    old = _message(Text("Looking."), ToolCall("c1", "search", '{"q":'))
    growing = _next(old, lambda m: m.add_tool_call(ToolCall("c1", "search", '{"q":"x"')))
    delta = MessageDelta.between(old, growing)
    assert delta is not None and delta.append == {1: '"x"'} and not delta.parts
    done = _next(growing, lambda m: m.add_tool_call(ToolCall("c1", "search", '{"q":"x"}', True)))
    delta = MessageDelta.between(growing, done)
    assert delta is not None
    assert not delta.append
    assert delta.to_json()["parts"] == {
        "1": {
            "type": "tool_call",
            "data": {
                "id": "c1",
                "name": "search",
                "input": '{"q":"x"}',
                "finished": True,
                "provider_executed": False,
            },
        }
    }


def test_parts_added_at_the_end_are_parts_entries_in_order() -> None:
    old = _message(Text("Calling"))

    def add(m: Message) -> None:
        m.append_text(" two tools")
        m.add_tool_call(ToolCall("c1", "a"))
        m.add_tool_call(ToolCall("c2", "b"))

    new = _next(old, add)
    delta = MessageDelta.between(old, new)
    assert delta is not None
    wire = delta.to_json()
    assert wire["append"] == {"0": " two tools"}
    assert list(wire["parts"]) == ["1", "2"]
    assert _all_fields(delta.apply(old)) == _all_fields(new)


def test_a_finish_is_a_new_part_and_sets_finished() -> None:
    old = _message(Text("Done"))
    new = _next(old, lambda m: m.add_finish(FinishReason.END_TURN))
    delta = MessageDelta.between(old, new)
    assert delta is not None
    wire = delta.to_json()
    assert wire["parts"]["1"]["type"] == "finish"
    assert wire["set"] == {"finished": True, "updated_at": new.updated_at.isoformat()}
    assert delta.apply(old).is_finished


def test_a_text_changed_other_than_at_its_end_is_sent_whole() -> None:
    old = _message(Text("abc"))
    new = _next(old, lambda m: m.parts.__setitem__(0, Text("abX")))
    delta = MessageDelta.between(old, new)
    assert delta is not None and delta.parts == {0: Text("abX")} and not delta.append


def test_a_part_of_another_kind_in_place_is_sent_whole() -> None:
    old = _message(Text("a"), ImageURL("http://x/1.png"))
    new = _next(old, lambda m: m.parts.__setitem__(1, Binary("f", "image/png", b"\x89PNG")))
    delta = MessageDelta.between(old, new)
    assert delta is not None and delta.parts == {1: new.parts[1]}
    assert delta.to_json()["parts"]["1"]["data"]["data"] == "iVBORw=="


def test_every_changed_top_level_field_is_set() -> None:
    old = _message(Text("a"))

    def change(m: Message) -> None:
        m.model, m.provider, m.is_summary_message = "gpt", "openai", True
        m.session_id, m.role, m.created_at = "s2", Role.USER, T0 + timedelta(days=1)

    new = _next(old, change)
    delta = MessageDelta.between(old, new)
    assert delta is not None
    assert delta.set == {
        "session_id": "s2",
        "role": "user",
        "model": "gpt",
        "provider": "openai",
        "created_at": new.created_at.isoformat(),
        "updated_at": new.updated_at.isoformat(),
        "is_summary_message": True,
    }
    assert _all_fields(delta.apply(old)) == _all_fields(new)


def test_a_time_that_keeps_its_instant_but_not_its_offset_is_a_change() -> None:
    """Equal instants compare equal in Python, but the JSON form writes the offset."""
    old = _message(Reasoning("r", started_at=T0), Finish(FinishReason.END_TURN, T0))

    def shift(m: Message) -> None:
        m.parts[0] = Reasoning("r", started_at=T0.astimezone(PLUS2))
        m.parts[1] = Finish(FinishReason.END_TURN, T0.astimezone(PLUS2))

    new = _next(old, shift, seconds=0)
    new.updated_at = T0.astimezone(PLUS2)
    delta = MessageDelta.between(old, new)
    assert delta is not None
    assert delta.parts == {0: new.parts[0], 1: new.parts[1]}
    assert delta.set == {"updated_at": "2025-05-01T14:00:00+02:00"}
    assert message_json(delta.apply(old)) == message_json(new)
    # The write path's pure-append test agrees: rewriting the parts keeps the new offsets.
    assert diff(old, new) is None


def test_parts_removed_or_another_message_have_no_delta() -> None:
    old = _message(Text("a"), ImageURL("u"))
    assert MessageDelta.between(old, _next(old, lambda m: m.parts.pop())) is None
    other = _next(old, lambda m: m.append_text("b"))
    other.id = "m2"
    assert MessageDelta.between(old, other) is None


def test_the_common_case_is_small_whatever_the_length_of_the_message() -> None:
    old = _message(Reasoning("think " * 5000, started_at=T0, finished_at=T0), Text("x" * 50000))
    new = _next(old, lambda m: m.append_text(" and"))
    delta = MessageDelta.between(old, new)
    assert delta is not None
    wire = json.dumps(delta.to_json(), separators=(",", ":"))
    assert len(wire) < 120, wire


# -- apply ------------------------------------------------------------------------------------


def test_apply_leaves_its_input_untouched() -> None:
    old = _message(Text("a"), ToolCall("c1", "t", "{"))
    before = _all_fields(old)
    new = _next(old, lambda m: (m.append_text("b"), m.add_finish(FinishReason.TOOL_USE)))
    delta = MessageDelta.between(old, new)
    assert delta is not None
    applied = delta.apply(old)
    assert _all_fields(old) == before
    assert applied.parts is not old.parts


def test_apply_refuses_a_copy_at_another_revision_or_of_another_message() -> None:
    old = _message(Text("a"))
    delta = MessageDelta.between(old, _next(old, lambda m: m.append_text("b")))
    assert delta is not None
    for revision in (6, 8):
        stale = old.clone()
        stale.revision = revision
        with pytest.raises(ValueError, match=f"revision 7 .*at revision {revision}"):
            delta.apply(stale)
    other = old.clone()
    other.id = "m2"
    with pytest.raises(ValueError, match="'m1', not 'm2'"):
        delta.apply(other)


@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        (MessageDelta("m1", 7, 8, append={2: "x"}), "append to part 2: the message has 2 parts"),
        (MessageDelta("m1", 7, 8, append={1: "x"}), "ImageURL part has no streamed field"),
        (MessageDelta("m1", 7, 8, parts={3: Text("x")}), "part 3 would be added past the end"),
        (
            MessageDelta("m1", 7, 8, append={0: "x"}, parts={0: Text("y")}),
            "part 0 is both appended to and replaced",
        ),
        (MessageDelta("m1", 7, 8, set={"finished": True}), "finished would be True"),
        (
            MessageDelta("m1", 7, 8, parts={2: Finish(FinishReason.END_TURN, T0)}),
            "finished would be False",
        ),
        (MessageDelta("m1", 7, 8, set={"role": "robot"}), "role 'robot' is not a role"),
        (MessageDelta("m1", 7, 8, set={"parts": []}), "'parts' is not a field a delta sets"),
    ],
)
def test_apply_refuses_a_delta_that_does_not_fit(delta: MessageDelta, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        delta.apply(_message(Text("a"), ImageURL("u")))


# -- from_json --------------------------------------------------------------------------------

_GOOD: dict[str, Any] = {"id": "m1", "base": 1, "revision": 2}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "a delta is a JSON object, not list"),
        ({"base": 1, "revision": 2}, "lacks 'id'"),
        ({"id": "m1", "revision": 2}, "lacks 'base'"),
        ({"id": "m1", "base": 1}, "lacks 'revision'"),
        ({**_GOOD, "extra": 1}, "unknown keys: extra"),
        ({**_GOOD, "id": ""}, "id is not a non-empty string"),
        ({**_GOOD, "id": 5}, "id is not a non-empty string"),
        ({**_GOOD, "base": -1}, "base -1 is not an integer"),
        ({**_GOOD, "base": 1.0}, "base 1.0 is not an integer"),
        ({**_GOOD, "base": "1"}, "base '1' is not an integer"),
        ({**_GOOD, "revision": True}, "revision True is not an integer"),
        ({**_GOOD, "append": []}, "append is not an object"),
        ({**_GOOD, "append": {"-1": "x"}}, "key '-1' is not a part index"),
        ({**_GOOD, "append": {"01": "x"}}, "key '01' is not a part index"),
        ({**_GOOD, "append": {"1.5": "x"}}, "key '1.5' is not a part index"),
        ({**_GOOD, "append": {"one": "x"}}, "key 'one' is not a part index"),
        ({**_GOOD, "append": {"9" * 5000: "x"}}, "is not a part index"),
        ({**_GOOD, "append": {"0": 5}}, "append 0 is not a string"),
        ({**_GOOD, "parts": {"0": {"type": "nope", "data": {}}}}, "unknown type 'nope'"),
        ({**_GOOD, "parts": {"0": {"type": "text", "data": {}}}}, "field 'text' is missing"),
        ({**_GOOD, "parts": {"0": "text"}}, "part 0 is not an object"),
        (
            {**_GOOD, "append": {"1": "x"}, "parts": {"1": {"type": "text", "data": {"text": ""}}}},
            "appends to and replaces part 1",
        ),
        ({**_GOOD, "set": []}, "set is not an object"),
        ({**_GOOD, "set": {"revision": 3}}, "'revision' is the delta's own field"),
        ({**_GOOD, "set": {"id": "m2"}}, "'id' is not a settable field"),
        ({**_GOOD, "set": {"parts": []}}, "'parts' is not a settable field"),
        ({**_GOOD, "set": {"finished": "yes"}}, "finished is not a boolean"),
        ({**_GOOD, "set": {"model": None}}, "model is not a string"),
        ({**_GOOD, "set": {"updated_at": "soon"}}, "updated_at 'soon' is not an ISO 8601"),
        ({**_GOOD, "set": {"updated_at": "2025-01-01T00:00:00"}}, "has no time zone"),
        ({**_GOOD, "set": {"role": "robot"}}, "role 'robot' is not a role"),
        ({**_GOOD, "set": {"session_id": ""}}, "session_id is empty"),
    ],
)
def test_from_json_refuses_malformed_input(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        MessageDelta.from_json(value)


def test_from_json_takes_present_but_empty_objects() -> None:
    delta = MessageDelta.from_json({**_GOOD, "append": {}, "parts": {}, "set": {}})
    assert delta == MessageDelta("m1", 1, 2)
    assert delta.to_json() == _GOOD


def test_a_parts_index_that_skips_ahead_is_refused_when_applied() -> None:
    """Whether an index skips ahead depends on the message: the delta alone cannot tell."""
    part = {"type": "image_url", "data": {"url": "u", "detail": ""}}
    delta = MessageDelta.from_json({**_GOOD, "id": "m1", "base": 7, "parts": {"2": part}})
    assert delta.apply(_message(Text("a"), Text("b"))).parts[2] == ImageURL("u")
    with pytest.raises(ValueError, match="part 2 would be added past the end"):
        delta.apply(_message(Text("a")))


# -- the JSON form of a message ----------------------------------------------------------------


def test_message_from_json_refuses_malformed_input() -> None:
    good = message_json(_message(Text("a"), Finish(FinishReason.END_TURN, T0)))
    assert _all_fields(message_from_json(good)) == _all_fields(
        _message(Text("a"), Finish(FinishReason.END_TURN, T0))
    )
    bad: list[tuple[Any, str]] = [
        ("text", "a message is a JSON object, not str"),
        ({k: v for k, v in good.items() if k != "parts"}, "lacks parts"),
        ({**good, "colour": "red"}, "unknown keys: colour"),
        ({**good, "finished": False}, "finished is False but its parts include a finish"),
        ({**good, "revision": -2}, "revision -2 is not"),
        ({**good, "parts": {}}, "parts is not an array"),
        ({**good, "parts": [{"type": "text"}]}, r"part 0 \(text\): part data is not an object"),
        ({**good, "created_at": 5}, "created_at is not a string"),
        ({**good, "finished": False, "parts": [good["parts"][0]] * 2}, "more than one Text"),
    ]
    for value, reason in bad:
        with pytest.raises(ValueError, match=reason):
            message_from_json(value)


# -- properties over random changes -----------------------------------------------------------

_ZONES = st.sampled_from([UTC, PLUS2, timezone(timedelta(hours=-5, minutes=-30))])
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_ZONES
)
# Lone surrogates too: a stream may cut a character in half, and the store keeps what it got.
_texts = st.text(max_size=6) | st.text(st.characters(exclude_categories=()), max_size=4)
_parts = st.one_of(
    st.builds(Text, _texts),
    st.builds(Reasoning, _texts, _texts, st.none() | _times, st.none() | _times),
    st.builds(ImageURL, _texts, _texts),
    st.builds(Binary, _texts, _texts, st.binary(max_size=8)),
    st.builds(ToolCall, _texts, _texts, _texts, st.booleans(), st.booleans()),
    st.builds(ToolResult, _texts, _texts, _texts, _texts, st.booleans()),
    st.builds(Finish, st.sampled_from(FinishReason), _times, _texts, _texts),
)

_streamed = st.one_of(  # parts with a streamed field, also drawn on their own
    st.builds(Text, _texts),
    st.builds(Reasoning, _texts, _texts, st.none() | _times),
    st.builds(ToolCall, _texts, _texts, _texts),
)


def _grow_part(m: Message, i: int, text: str) -> None:
    """Grow the streamed field of part ``i`` (mod the count), if it has one."""
    if m.parts:
        i %= len(m.parts)
        part = m.parts[i]
        if isinstance(part, Text):
            m.parts[i] = Text(part.text + text)
        elif isinstance(part, Reasoning):
            m.parts[i] = dataclasses.replace(part, thinking=part.thinking + text)
        elif isinstance(part, ToolCall):
            m.parts[i] = dataclasses.replace(part, input=part.input + text)


def _finish_part(m: Message, i: int, when: datetime) -> None:
    """End part ``i``: a tool call's input is complete, reasoning ended."""
    if m.parts:
        i %= len(m.parts)
        part = m.parts[i]
        if isinstance(part, ToolCall):
            m.parts[i] = dataclasses.replace(part, finished=True)
        elif isinstance(part, Reasoning):
            m.parts[i] = dataclasses.replace(part, finished_at=when)


def _shift_zone(m: Message, zone: timezone) -> None:
    """The same instants in another time zone."""
    m.updated_at = m.updated_at.astimezone(zone)
    for i, part in enumerate(m.parts):
        if isinstance(part, Finish):
            m.parts[i] = dataclasses.replace(part, time=part.time.astimezone(zone))


_index = st.integers(0, 20)
_growth = st.tuples(st.just(_grow_part), _index, _texts.filter(bool))
_other_changes = st.one_of(
    st.tuples(st.just(_finish_part), _index, _times),
    st.tuples(st.just(Message.append_text), _texts),
    st.tuples(st.just(Message.append_reasoning), _texts),
    st.tuples(st.just(Message.finish_reasoning)),
    st.tuples(st.just(Message.set_reasoning_signature), _texts),
    st.tuples(st.just(Message.add_tool_call), st.builds(ToolCall, _texts, _texts, _texts)),
    st.tuples(
        st.just(Message.add_tool_result),
        st.builds(ToolResult, _texts, _texts, _texts, _texts, st.booleans()),
    ),
    st.tuples(st.just(Message.add_finish), st.sampled_from(FinishReason), _texts),
    st.tuples(st.just(Message.add_image_url), _texts, _texts),
    st.tuples(st.just(Message.add_binary), _texts, _texts, st.binary(max_size=6)),
    st.tuples(st.just(lambda m, i: m.parts and m.parts.pop(i % len(m.parts))), _index),
    st.tuples(
        st.just(lambda m, i, p: m.parts and m.parts.__setitem__(i % len(m.parts), p)),
        _index,
        _parts,
    ),
    st.tuples(st.just(setattr), st.sampled_from(["model", "provider"]), _texts),
    st.tuples(st.just(setattr), st.just("session_id"), st.text(min_size=1, max_size=4)),
    st.tuples(st.just(setattr), st.just("is_summary_message"), st.booleans()),
    st.tuples(st.just(setattr), st.sampled_from(["created_at", "updated_at"]), _times),
    st.tuples(st.just(setattr), st.just("role"), st.sampled_from(Role)),
    st.tuples(st.just(_shift_zone), _ZONES),
)
# The common case, a streamed field grew, as likely as all the others together (``one_of``
# would flatten ``_growth | _other_changes`` and choose among its branches alike).
_changes = st.booleans().flatmap(lambda grow: _growth if grow else _other_changes)


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[Message, Message]:
    """A message and a later state of it: a few random changes (or, rarely, another id)."""
    old = Message(
        draw(st.sampled_from(["m1", "m2"])),
        "s1",
        draw(st.sampled_from(Role)),
        draw(st.lists(st.booleans().flatmap(lambda s: _streamed if s else _parts), max_size=5)),
        draw(_texts),
        draw(_texts),
        draw(_times),
        draw(_times),
        draw(st.booleans()),
        draw(st.integers(0, 10**6)),
    )
    new = old.clone()
    for change, *args in draw(st.lists(_changes, min_size=1, max_size=4)):
        change(new, *args)
    if draw(st.booleans()):
        new.updated_at = draw(_times)
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
        new.id = "m1" if old.id == "m2" else "m2"
    new.revision = draw(st.integers(0, 10**6))
    return old, new


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_pairs())
def test_between_then_apply_gives_the_new_state(pair: tuple[Message, Message]) -> None:
    old, new = pair
    before = _all_fields(old)
    delta = MessageDelta.between(old, new)
    if delta is None:
        assert old.id != new.id or len(new.parts) < len(old.parts)
        return
    assert (delta.id, delta.base, delta.revision) == (new.id, old.revision, new.revision)
    assert _all_fields(delta.apply(old)) == _all_fields(new)
    assert _all_fields(old) == before
    # The JSON form: compact, round-trips, and applied by the plain JSON rules gives the new
    # message's JSON.
    wire = _wire(delta.to_json())
    assert MessageDelta.from_json(wire) == delta
    assert MessageDelta.from_json(wire).to_json() == delta.to_json()
    assert _wire(apply_json(_wire(message_json(old)), wire)) == _wire(message_json(new))
    # The rules: appends only to streamed parts of the base, never an index named twice, parts
    # that merely grew are never sent whole, and `set` names exactly the changed fields.
    for index in delta.append:
        assert index < len(old.parts) and type(old.parts[index]) in (Text, Reasoning, ToolCall)
    assert not delta.append.keys() & delta.parts.keys()
    for index in delta.parts:
        if index < len(old.parts):
            assert grown(old.parts[index], new.parts[index]) is None
    old_json, new_json = message_json(old), message_json(new)
    changed = {k for k in new_json if k not in ("parts", "revision") and old_json[k] != new_json[k]}
    assert set(delta.set) == changed
    stale = old.clone()
    stale.revision = old.revision + 1
    with pytest.raises(ValueError, match="applies to revision"):
        delta.apply(stale)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_pairs(), st.data())
def test_merged_deltas_do_what_both_do(pair: tuple[Message, Message], data: st.DataObject) -> None:
    first, second = pair
    third = second.clone()
    for change, *args in data.draw(st.lists(_changes, min_size=1, max_size=4)):
        change(third, *args)
    third.revision = data.draw(st.integers(0, 10**6))
    one, two = MessageDelta.between(first, second), MessageDelta.between(second, third)
    if one is None or two is None:
        return
    merged = one.merge(two)
    if merged is None:  # only when the second delta does not fit what the first made
        with pytest.raises(ValueError):
            two.apply(one.apply(first))
        return
    assert (merged.id, merged.base, merged.revision) == (first.id, first.revision, third.revision)
    assert _all_fields(merged.apply(first)) == _all_fields(third)
    assert not merged.append.keys() & merged.parts.keys()
    wire = _wire(merged.to_json())
    assert _wire(apply_json(_wire(message_json(first)), wire)) == _wire(message_json(third))


def test_a_delta_that_does_not_follow_is_not_merged() -> None:
    old = _message(Text("a"))
    new = _next(old, lambda m: m.append_text("b"))
    newer = _next(new, lambda m: m.append_text("c"))
    one, two = MessageDelta.between(old, new), MessageDelta.between(new, newer)
    assert one is not None and two is not None
    assert two.merge(one) is None  # the wrong order
    assert one.merge(MessageDelta("other", new.revision, 9)) is None
    merged = one.merge(two)
    assert merged is not None and dict(merged.append) == {0: "bc"}


@settings(max_examples=200)
@given(st.lists(_parts, max_size=6), _times, st.integers(0, 10**6))
def test_the_json_form_of_a_valid_message_round_trips(
    parts: list[Any], when: datetime, revision: int
) -> None:
    message = Message("m1", "s1", Role.TOOL, [], "model", "", when, when, False, revision)
    for part in parts:  # keep the model's rules: one text, one reasoning, one finish, ids once
        if type(part) in (Text, Reasoning, Finish):
            fits = all(type(p) is not type(part) for p in message.parts)
        else:
            fits = not isinstance(part, ToolCall) or part.id not in {
                c.id for c in message.tool_calls
            }
        if fits:
            message.parts.append(part)
    if any(isinstance(p, ToolCall) and not p.id for p in message.parts):
        return
    as_json = message_json(message)
    back = message_from_json(as_json)
    assert message_json(back) == as_json
    assert back.revision == revision


# -- the web page's applier (Node) ------------------------------------------------------------

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed: delta.js is not run")


def _run_node(*args: str) -> str:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(CHECK_JS), str(DELTA_JS), *args],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


@needs_node
def test_delta_js_applies_every_delta_exactly_as_python(tmp_path: Path) -> None:
    cases: list[dict[str, Any]] = []
    expected: list[Any] = []

    @settings(max_examples=600, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_pairs())
    def collect(pair: tuple[Message, Message]) -> None:
        old, new = pair
        delta = MessageDelta.between(old, new)
        if delta is None:
            return
        cases.append({"message": message_json(old), "delta": delta.to_json()})
        expected.append(message_json(new))
        if len(expected) % 10 == 0:  # now and then the same delta for a stale copy
            stale = {**message_json(old), "revision": old.revision + 1}
            cases.append({"message": stale, "delta": delta.to_json()})
            expected.append(ValueError("applies to revision"))

    collect()
    assert len(cases) > 300
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))  # ASCII: lone surrogates travel as escapes
    results = json.loads(_run_node(str(path)))
    assert len(results) == len(cases)
    for case, want, got in zip(cases, expected, results, strict=True):
        assert not got["mutated"], case
        if isinstance(want, ValueError):
            assert str(want) in got.get("error", ""), (case, got)
        else:
            assert "error" not in got, (case, got)
            assert got["result"] == _wire(want), case


_JS_MESSAGE = message_json(_message(Text("a"), ImageURL("u"), revision=7))
_JS_FINISH = {
    "type": "finish",
    "data": {"reason": "end_turn", "time": "t", "message": "", "details": ""},
}


@needs_node
@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        (
            {"id": "m1", "base": 6, "revision": 8},
            "applies to revision 6; this copy is at revision 7",
        ),
        ({"id": "m2", "base": 7, "revision": 8}, 'for message "m2", not "m1"'),
        ({"id": "m1", "base": 7}, "base or revision is not an integer"),
        ({"id": "m1", "base": 7, "revision": 8, "more": 1}, 'unknown key "more"'),
        ({"id": "m1", "base": 7, "revision": 8, "append": {"2": "x"}}, "the message has 2 parts"),
        ({"id": "m1", "base": 7, "revision": 8, "append": {"1": "x"}}, "has no streamed field"),
        ({"id": "m1", "base": 7, "revision": 8, "append": {"0": 1}}, "append 0 is not a string"),
        ({"id": "m1", "base": 7, "revision": 8, "append": {"-1": "x"}}, "is not a part index"),
        ({"id": "m1", "base": 7, "revision": 8, "append": {"01": "x"}}, "is not a part index"),
        ({"id": "m1", "base": 7, "revision": 8, "parts": {"3": _JS_FINISH}}, "past the end"),
        ({"id": "m1", "base": 7, "revision": 8, "parts": {"2": {"type": "x"}}}, "not a part"),
        (
            {
                "id": "m1",
                "base": 7,
                "revision": 8,
                "append": {"0": "x"},
                "parts": {"0": _JS_FINISH},
            },
            "both appended to and replaced",
        ),
        (
            {"id": "m1", "base": 7, "revision": 8, "parts": {"2": _JS_FINISH}},
            "finished would be false",
        ),
        ({"id": "m1", "base": 7, "revision": 8, "set": {"revision": 9}}, "not a settable field"),
        ({"id": "m1", "base": 7, "revision": 8, "set": {"__proto__": {}}}, "not a settable field"),
        ({"id": "m1", "base": 7, "revision": 8, "set": {"finished": 1}}, "is not a boolean"),
    ],
)
def test_delta_js_refuses_what_does_not_fit(tmp_path: Path, delta: Any, reason: str) -> None:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([{"message": _JS_MESSAGE, "delta": delta}]))
    [got] = json.loads(_run_node(str(path)))
    assert reason in got.get("error", ""), got
    assert not got["mutated"]


@needs_node
def test_delta_js_is_a_classic_script_that_defines_a_global() -> None:
    assert _run_node("--classic") == "ok"


# -- in a store, and served ---------------------------------------------------------------------


async def test_deltas_between_the_states_a_subscriber_sees(db_url: str) -> None:
    """Each state the feed announces is the previous one plus its delta, revisions included."""
    async with open_store(db_url, debounce=0) as store:
        session = await store.sessions.create("deltas")
        reply = await store.messages.create(session.id, role=Role.ASSISTANT)
        async with store.messages.subscribe(session_id=session.id) as sub:
            reply.append_reasoning("Hmm")
            await store.messages.update(reply)
            reply.finish_reasoning()
            for word in ["Deltas ", "carry ", "what ", "changed."]:
                reply.append_text(word)
                await store.messages.update(reply)
            reply.add_tool_call(ToolCall("c1", "look", '{"q"'))
            await store.messages.update(reply)
            reply.add_tool_call(ToolCall("c1", "look", '{"q":1}', finished=True))
            reply.add_finish(FinishReason.TOOL_USE)
            await store.messages.update(reply)
            states = []
            async with asyncio.timeout(10):
                while not states or not states[-1].is_finished:
                    states.append((await sub.receive()).payload)
        assert len(states) >= 5
        current, appends = states[0], 0
        for new in states[1:]:  # a client: its copy, then each change as a delta
            delta = MessageDelta.between(current, new)
            assert delta is not None
            appends += bool(delta.append)
            current = MessageDelta.from_json(_wire(delta.to_json())).apply(current)
            assert _all_fields(current) == _all_fields(new)
        assert appends >= 3  # the streamed words went as appends
        assert _all_fields(current) == _all_fields(await store.messages.get(reply.id))


async def test_the_server_serves_delta_js(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store:
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            response = await client.get("/static/delta.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.content == DELTA_JS.read_bytes()
