"""What the database knows of inputs and turns, for callers that follow them from outside the
process that runs them (a chat route that streams a turn, a status page).

``InputRecord`` and ``TurnRecord`` are snapshots read in one transaction each; the read jobs
here are run through ``Store.transaction`` (``run_read``) like every other dispatcher
statement. A turn's replies are the messages it wrote: every assistant or tool message of the
session created after the turn's user message and before the next turn's user message, in
creation order (steering messages are user messages and are not replies).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from .._database._message_jobs import list_messages
from .._database._schema import messages
from .._database._tx import Tx
from .._model import Message, Role
from ._config import TurnOutcome
from ._persist import PENDING, RUNNING
from ._receipts import outcome_of
from ._tables import dispatch_inputs, dispatch_turns

__all__ = [
    "InputRecord",
    "TurnRecord",
    "active_input",
    "find_input",
    "read_input",
    "read_turn",
]

_REPLY_ROLES = (Role.ASSISTANT.value, Role.TOOL.value)


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One submitted input as stored.

    ``state``: ``"pending"``, ``"running"`` (consumed by the running turn ``turn_id``) or how
    it ended (a ``TurnOutcome`` value). ``turn_id``: the turn that consumed it (None while
    pending, and for input that ended without a turn: dropped, stale, discarded).
    """

    id: str
    session_id: str
    key: str | None
    state: str
    turn_id: str | None
    submitted_at: datetime
    ended_at: datetime | None

    @property
    def pending(self) -> bool:
        """True while no turn has taken the input yet."""
        return self.state == PENDING

    @property
    def outcome(self) -> TurnOutcome | None:
        """How it ended (None while pending or running)."""
        return outcome_of(self.state)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One turn as stored, with the messages it wrote so far.

    ``state``: ``"running"``, ``"completed"``, ``"failed"``, ``"cancelled"`` or
    ``"interrupted"`` (its process died and another one repaired it). ``replies``: the
    assistant and tool messages it wrote, in creation order, as stored when read (a reply
    still streaming is shown as last written).
    """

    id: str
    session_id: str
    state: str
    user_message_id: str | None
    input_ids: tuple[str, ...]
    started_at: datetime
    ended_at: datetime | None
    replies: tuple[Message, ...]

    @property
    def running(self) -> bool:
        """True until the turn's end is recorded."""
        return self.state == RUNNING


_INPUT_COLUMNS = (
    dispatch_inputs.c.id,
    dispatch_inputs.c.session_id,
    dispatch_inputs.c.key,
    dispatch_inputs.c.state,
    dispatch_inputs.c.turn_id,
    dispatch_inputs.c.created_at,
    dispatch_inputs.c.ended_at,
)


def _input(row: Any) -> InputRecord:
    return InputRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def find_input(tx: Tx, *, session_id: str, key: str) -> InputRecord | None:
    """The session's input submitted under ``key``, or None."""
    row = tx.conn.execute(
        select(*_INPUT_COLUMNS).where(
            dispatch_inputs.c.session_id == session_id, dispatch_inputs.c.key == key
        )
    ).first()
    return None if row is None else _input(row)


def read_input(tx: Tx, *, input_id: str) -> InputRecord | None:
    """The input, or None when there is none (never submitted, or gone with its session)."""
    row = tx.conn.execute(select(*_INPUT_COLUMNS).where(dispatch_inputs.c.id == input_id)).first()
    return None if row is None else _input(row)


def active_input(tx: Tx, *, session_id: str) -> InputRecord | None:
    """An input of the session's running turn (its oldest), else the oldest pending input;
    None when nothing is pending or running there."""
    conn = tx.conn
    running = conn.execute(
        select(*_INPUT_COLUMNS)
        .join(dispatch_turns, dispatch_turns.c.id == dispatch_inputs.c.turn_id)
        .where(
            dispatch_inputs.c.session_id == session_id,
            dispatch_turns.c.state == RUNNING,
        )
        .order_by(dispatch_turns.c.started_at, dispatch_inputs.c.seq)
        .limit(1)
    ).first()
    if running is not None:
        return _input(running)
    pending = conn.execute(
        select(*_INPUT_COLUMNS)
        .where(dispatch_inputs.c.session_id == session_id, dispatch_inputs.c.state == PENDING)
        .order_by(dispatch_inputs.c.seq)
        .limit(1)
    ).first()
    return None if pending is None else _input(pending)


def read_turn(tx: Tx, *, turn_id: str) -> TurnRecord | None:
    """The turn and its replies (see the module docstring), or None."""
    conn = tx.conn
    t = dispatch_turns.c
    row = conn.execute(
        select(t.session_id, t.state, t.user_message_id, t.started_at, t.ended_at).where(
            t.id == turn_id
        )
    ).first()
    if row is None:
        return None
    session_id, state, user_message_id, started_at, ended_at = row
    input_ids = tuple(
        conn.execute(
            select(dispatch_inputs.c.id)
            .where(dispatch_inputs.c.turn_id == turn_id)
            .order_by(dispatch_inputs.c.seq)
        ).scalars()
    )
    replies: list[Message] = []
    first = None
    if user_message_id is not None:
        first = conn.execute(
            select(messages.c.seq).where(messages.c.id == user_message_id)
        ).scalar_one_or_none()
    if first is not None:
        following = conn.execute(
            select(func.min(messages.c.seq))
            .select_from(messages.join(dispatch_turns, t.user_message_id == messages.c.id))
            .where(t.session_id == session_id, messages.c.seq > first)
        ).scalar_one_or_none()
        where = [
            messages.c.session_id == session_id,
            messages.c.seq > first,
            messages.c.role.in_(_REPLY_ROLES),
        ]
        if following is not None:
            where.append(messages.c.seq < following)
        replies = list_messages(tx, *where)
    return TurnRecord(
        turn_id,
        session_id,
        state,
        user_message_id,
        input_ids,
        started_at,
        ended_at,
        tuple(replies),
    )
