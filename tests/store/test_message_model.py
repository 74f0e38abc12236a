"""The model's read properties, mutators, clone and validation (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from messagestore import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    InvalidMessage,
    Message,
    Reasoning,
    Role,
    Text,
    ToolCall,
    ToolResult,
)


def make(**kwargs: object) -> Message:
    return Message("m1", "s1", Role.ASSISTANT, **kwargs)  # type: ignore[arg-type]


def test_text_appends_into_one_part() -> None:
    m = make()
    assert m.text == ""
    m.append_text("Hel")
    m.append_text("lo")
    assert m.text == "Hello"
    assert [type(p) for p in m.parts] == [Text]


def test_reasoning_started_and_finished_once() -> None:
    m = make()
    m.append_reasoning("think")
    first = m.reasoning
    assert first is not None and first.started_at is not None and first.finished_at is None
    m.finish_reasoning()
    finished_at = m.reasoning.finished_at  # type: ignore[union-attr]
    assert finished_at is not None
    m.finish_reasoning()
    assert m.reasoning.finished_at == finished_at  # type: ignore[union-attr]
    assert m.reasoning.thinking == "think"  # type: ignore[union-attr]


def test_tool_calls_upsert_by_id_in_place() -> None:
    m = make()
    m.add_tool_call(ToolCall("a", "ls"))
    m.add_tool_call(ToolCall("b", "cat"))
    m.add_tool_call(ToolCall("a", "ls", input='{"x":1}', finished=True))
    assert [(c.id, c.finished) for c in m.tool_calls] == [("a", True), ("b", False)]
    assert m.tool_calls[0].input == '{"x":1}'


def test_finish_replaces_earlier_finish() -> None:
    m = make()
    assert not m.is_finished and m.finish is None
    m.add_finish(FinishReason.TOOL_USE)
    m.add_finish("end_turn", "done", "details")
    assert m.is_finished
    assert m.finish is not None and m.finish.reason is FinishReason.END_TURN
    assert (m.finish.message, m.finish.details) == ("done", "details")
    assert sum(isinstance(p, Finish) for p in m.parts) == 1


def test_other_parts() -> None:
    m = make()
    m.add_image_url("https://x/y.png", "high")
    m.add_binary("a.bin", "application/octet-stream", bytearray(b"\x00\x01"))
    m.add_tool_result(ToolResult("a", "ls", "out"))
    assert m.parts[0] == ImageURL("https://x/y.png", "high")
    assert m.parts[1] == Binary("a.bin", "application/octet-stream", b"\x00\x01")
    assert type(m.parts[1].data) is bytes  # type: ignore[union-attr]
    assert m.tool_results == [ToolResult("a", "ls", "out")]


def test_clone_shares_nothing_mutable() -> None:
    m = make()
    m.append_text("a")
    c = m.clone()
    c.append_text("b")
    c.add_finish(FinishReason.END_TURN)
    c.model = "changed"
    assert m.text == "a" and not m.is_finished and m.model == ""
    assert c.parts is not m.parts
    assert c == Message(**{f: getattr(c, f) for f in c.__dataclass_fields__})


def test_enums_are_str_enums() -> None:
    assert Role.USER == "user" and FinishReason.PERMISSION_DENIED == "permission_denied"
    assert {r.name for r in Role} == {"USER", "ASSISTANT", "SYSTEM", "TOOL"}


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda m: setattr(m, "id", ""), "id must not be empty"),
        (lambda m: setattr(m, "session_id", 3), "session_id must be a str"),
        (lambda m: setattr(m, "role", "robot"), "unknown role"),
        (lambda m: m.parts.append("text"), "not a message part"),
        (lambda m: m.parts.extend([Text("a"), Text("b")]), "more than one Text"),
        (lambda m: m.parts.append(Text(5)), "Text.text"),  # type: ignore[arg-type]
        (lambda m: m.parts.extend([ToolCall("x", "a"), ToolCall("x", "b")]), "appears twice"),
        (lambda m: m.parts.append(ToolCall("", "a")), "has no id"),
        (
            lambda m: m.parts.append(Reasoning(started_at=datetime(2020, 1, 1))),
            "naive datetime",
        ),
        (
            lambda m: m.parts.append(Finish("end_turn", datetime.now(UTC))),  # type: ignore[arg-type]
            "Finish.reason",
        ),
    ],
)
def test_validation_names_the_problem(mutate: object, complaint: str) -> None:
    m = make()
    mutate(m)  # type: ignore[operator]
    with pytest.raises(InvalidMessage, match=complaint):
        m.validate()
    with pytest.raises(ValueError):  # InvalidMessage is also a ValueError
        m.validate()
