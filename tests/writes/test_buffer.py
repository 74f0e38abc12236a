"""The write path's buffer on its own: plain synchronous state, no database, no event loop."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from messagestore import (
    FinishReason,
    InvalidMessage,
    Message,
    MessageNotFound,
    Role,
    ToolCall,
)
from messagestore._database._group_commit import ItemResult, WriteResult
from messagestore._writes._buffer import Batch, Buffer, Settled


def message(text: str = "") -> Message:
    m = Message("m1", "s1", Role.ASSISTANT)
    if text:
        m.append_text(text)
    return m


def commit(
    buffer: Buffer,
    batch: Batch,
    revisions: dict[str, int],
    missing: tuple[str, ...] | list[str] = (),
    refused: dict[str, Exception] | None = None,
) -> Settled:
    """What the group commit reports for ``batch``: each row written whole."""
    items = {i: ItemResult(r, False, None, 0) for i, r in revisions.items()}
    return buffer.committed(batch, WriteResult(items, 0, frozenset(missing), refused or {}))


def accept(buffer: Buffer, m: Message, *, streaming_only: bool = False) -> bool:
    _, terminal = buffer.accept(m.clone(), streaming_only=streaming_only)
    return terminal


def test_accept_keeps_a_private_copy_and_counts() -> None:
    buffer = Buffer()
    m = message("a")
    accept(buffer, m)
    m.append_text("b")  # the caller keeps changing its own object
    assert buffer.last_accepted("m1") is not None
    assert buffer.last_accepted("m1").text == "a"  # type: ignore[union-attr]
    accept(buffer, m)
    assert buffer.updates == 2
    assert buffer.coalesced == 1
    assert buffer.pending_count == 1


@pytest.mark.parametrize(
    ("change", "terminal"),
    [
        (lambda m: m.append_text("more"), False),
        (lambda m: m.add_finish(FinishReason.END_TURN), True),
        (lambda m: m.add_tool_call(ToolCall("c1", "run")), True),
        (lambda m: m.finish_reasoning(), True),
        (lambda m: m.append_reasoning("thinking"), False),
    ],
)
def test_terminal_judgement_against_the_written_state(change: object, terminal: bool) -> None:
    buffer = Buffer()
    m = message("start")
    buffer.track_created(m.clone())
    change(m)  # type: ignore[operator]
    assert accept(buffer, m) is terminal


def test_a_tool_call_finishing_is_terminal_but_its_input_growing_is_not() -> None:
    buffer = Buffer()
    m = message()
    m.add_tool_call(ToolCall("c1", "run", "{"))
    buffer.track_created(m.clone())
    m.add_tool_call(ToolCall("c1", "run", '{"a"'))
    assert accept(buffer, m) is False
    m.add_tool_call(ToolCall("c1", "run", '{"a": 1}', finished=True))
    assert accept(buffer, m) is True


@pytest.mark.parametrize("field", ["session_id", "role", "created_at"])
def test_a_field_the_row_keeps_for_life_cannot_change(field: str) -> None:
    buffer = Buffer()
    m = message("x")
    buffer.track_created(m.clone())
    changed = m.clone()
    if field == "session_id":
        changed.session_id = "other"
    elif field == "role":
        changed.role = Role.USER
    else:
        changed.created_at = m.created_at - timedelta(days=1)
    with pytest.raises(InvalidMessage, match=field):
        buffer.accept(changed, streaming_only=False)
    assert buffer.last_accepted("m1") == m  # nothing was taken


def test_take_then_commit_makes_it_durable_and_says_what_to_announce() -> None:
    buffer = Buffer()
    m = message("hello")
    buffer.track_created(m.clone())
    entry, _ = buffer.accept(m.clone(), streaming_only=False)
    batch = buffer.take([entry])
    assert entry.written.in_flight is batch and entry.accepted.pending is None and not buffer.dirty
    settled = commit(buffer, batch, {"m1": 7}, (), {})
    assert entry.written.durable == entry.accepted.count == 1
    assert entry.written.in_flight is None
    ((state, terminal),) = settled.announced
    assert state.revision == 7 and state.text == "hello" and terminal is False
    assert state is entry.written.state  # the writer publishes a copy of it (if anyone listens)
    assert len(settled.staleness) == 1


def test_a_finished_message_is_released_after_its_write() -> None:
    buffer = Buffer()
    m = message("done")
    m.add_finish(FinishReason.END_TURN)
    entry, terminal = buffer.accept(m.clone(), streaming_only=False)
    assert terminal
    commit(buffer, buffer.take([entry]), {"m1": 1}, (), {})
    assert buffer.entry_count == 0


def test_a_failed_write_is_put_back_unless_a_newer_change_replaced_it() -> None:
    buffer = Buffer()
    m = message("one")
    entry, _ = buffer.accept(m.clone(), streaming_only=False)
    batch = buffer.take([entry])
    m.append_text(" two")
    buffer.accept(m.clone(), streaming_only=True)
    buffer.restore(batch)
    assert entry.accepted.pending is not None and entry.accepted.pending.text == "one two"
    assert "m1" in buffer.dirty and entry.written.in_flight is None
    other = Buffer()
    lone, _ = other.accept(message("only").clone(), streaming_only=False)
    other.restore(other.take([lone]))
    assert lone.accepted.pending is not None and lone.accepted.pending.text == "only"


def test_a_refused_row_stays_pending_with_its_error() -> None:
    buffer = Buffer()
    entry, _ = buffer.accept(message("x").clone(), streaming_only=False)
    error = ValueError("refused")
    settled = commit(buffer, buffer.take([entry]), {}, (), {"m1": error})
    assert settled.refused == {"m1": error}
    assert (
        entry.refusal.error is error
        and entry.accepted.pending is not None
        and entry.written.durable == 0
    )
    assert not settled.announced


def test_a_vanished_row_is_forgotten_and_later_updates_are_refused() -> None:
    buffer = Buffer()
    m = message("x")
    entry, _ = buffer.accept(m.clone(), streaming_only=False)
    settled = commit(buffer, buffer.take([entry]), {}, ["m1"], {})
    assert settled.missing == ["m1"]
    with pytest.raises(MessageNotFound):
        buffer.accept(m.clone(), streaming_only=False)
    with pytest.raises(MessageNotFound):
        buffer.last_accepted("m1")


def test_a_delete_drops_pending_state_and_refuses_updates_until_aborted() -> None:
    buffer = Buffer()
    m = message("x")
    buffer.accept(m.clone(), streaming_only=False)
    targets = buffer.begin_delete(lambda e: e.identity.session_id == "s1")
    assert buffer.pending_count == 0 and not buffer.dirty
    with pytest.raises(MessageNotFound):
        buffer.accept(m.clone(), streaming_only=False)
    buffer.abort_delete(targets)
    buffer.accept(m.clone(), streaming_only=False)
    assert buffer.pending_count == 1


def test_a_write_committed_during_a_delete_is_not_announced() -> None:
    buffer = Buffer()
    entry, _ = buffer.accept(message("x").clone(), streaming_only=False)
    batch = buffer.take([entry])
    buffer.begin_delete(lambda e: True)
    settled = commit(buffer, batch, {"m1": 3}, (), {})
    assert settled.announced == []


def test_idle_clean_entries_are_released() -> None:
    buffer = Buffer(idle_release=0.5)
    entry, _ = buffer.accept(message("x").clone(), streaming_only=False)
    commit(buffer, buffer.take([entry]), {"m1": 1}, (), {})
    assert buffer.entry_count == 1
    buffer.release_idle(time.monotonic())
    assert buffer.entry_count == 1
    buffer.release_idle(time.monotonic() + 1)
    assert buffer.entry_count == 0


def test_release_clean_keeps_an_entry_with_something_pending() -> None:
    buffer = Buffer()
    entry, _ = buffer.accept(message("x").clone(), streaming_only=False)
    buffer.release_clean(entry)
    assert buffer.entry_count == 1
    commit(buffer, buffer.take([entry]), {"m1": 1}, (), {})
    buffer.release_clean(entry)
    assert buffer.entry_count == 0


def test_a_failed_older_write_never_replaces_a_newer_snapshot_in_flight() -> None:
    # Writes of one id may be queued back to back (a tick, then a terminal update). If the
    # older one fails after the newer one took its snapshot, putting the older state back
    # would let a later write store it over the newer one.
    buffer = Buffer()
    m = message("old")
    entry, _ = buffer.accept(m.clone(), streaming_only=False)
    older = buffer.take([entry])
    m.append_text(" new")
    buffer.accept(m.clone(), streaming_only=True)
    newer = buffer.take([entry])
    buffer.restore(older)
    assert entry.accepted.pending is None and "m1" not in buffer.dirty
    buffer.restore(newer)
    assert entry.accepted.pending is not None and entry.accepted.pending.text == "old new"
