"""The dispatcher's SQL, part two: a turn's start, steering and end (one transaction each;
see ``_persist`` for the rules all of them keep).

A start reads the session's pending input once (with any ``SUMMARIZE`` notes still owed),
consumes what fits in one turn, records the turn and stores its user message (and, opted
in with ``ReplyConfig``, its reply) — seven statements in the common case on either backend
(ten with the reply), counted here because on a slow machine every
round trip to the database costs about as much as the statement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Connection

from .._database._tx import Tx
from .._messages import MessageService
from .._model import Message, Role
from ._config import MAX_TURN_CHARS, ReplyConfig
from ._persist import (
    PENDING,
    RUNNING,
    Claim,
    create_user_message,
    end_inputs,
    interrupt_turns,
    lock_session,
    release_claim_row,
)
from ._tables import dispatch_inputs, dispatch_sessions, dispatch_turns

__all__ = [
    "Busy",
    "Empty",
    "Finished",
    "Gone",
    "InputRow",
    "Started",
    "Steered",
    "finish_turn",
    "start_turn",
    "steer_turn",
]


@dataclass(frozen=True, slots=True)
class InputRow:
    """One input as a turn receives it."""

    id: str
    seq: int
    key: str | None
    text: str
    metadata: Mapping[str, Any] | None
    submitted_at: Any


@dataclass(frozen=True, slots=True)
class Busy:
    """Another live process holds the session's claim for ``retry_in`` more seconds."""

    owner: str
    retry_in: float
    stale: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Empty:
    """Nothing was pending (inputs at or below the stale cutoff were marked ``stale``)."""

    stale: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Gone:
    """The session no longer exists."""


@dataclass(frozen=True, slots=True)
class Started:
    """A turn started: its inputs consumed and its user message stored, in one commit."""

    turn_id: str
    token: int
    inputs: tuple[InputRow, ...]
    note: str
    user_message: Message
    remaining: int
    delivery: Mapping[str, Any] | None
    started_at: Any
    stale: tuple[str, ...] = ()
    interrupted: tuple[str, ...] = ()  # turns of the previous claim holder, repaired
    reply: Message | None = None  # created with the turn (``ReplyConfig``)


def start_turn(
    tx: Tx,
    *,
    messages: MessageService,
    session_id: str,
    owner: str,
    ttl: float,
    take_all: bool,
    turn_id: str,
    reply: ReplyConfig | None = None,
) -> Started | Busy | Empty | Gone:
    """Consume the session's pending input (all of it within ``MAX_TURN_CHARS``, or the
    oldest one) into turn ``turn_id`` and store its user message (through ``messages``) and,
    with ``reply``, its assistant reply after it.

    Takes the session's claim when it is free or expired; changes nothing while another live
    process holds it.
    """
    conn = tx.conn
    claim = lock_session(conn, session_id, delivery=True)
    if claim is None:
        return Gone()
    if claim.held_by_other(owner):
        assert claim.owner is not None and claim.expires_at is not None
        return Busy(claim.owner, (claim.expires_at - claim.now).total_seconds())
    if not claim.pending:
        return Empty()
    pending, notes = _pending_and_notes(conn, session_id)
    stale = [row.id for row in pending if row.seq <= claim.stale_seq]
    fresh = [row for row in pending if row.seq > claim.stale_seq]
    end_inputs(conn, stale, "stale", claim.now)
    if not fresh:
        return Empty(tuple(stale))
    token, repaired = _hold_claim(conn, session_id, owner, claim, ttl)
    taken = _within_budget(fresh if take_all else fresh[:1])
    note = _summary_note(conn, notes, turn_id)
    text = "\n\n".join(([note] if note else []) + [row.text for row in taken])
    message = create_user_message(tx, messages, session_id, text)
    conn.execute(
        insert(dispatch_turns).values(
            id=turn_id,
            session_id=session_id,
            owner=owner,
            token=token,
            state=RUNNING,
            user_message_id=message.id,
            inputs=len(taken),
            started_at=claim.now,
        )
    )
    _consume(conn, taken, turn_id)
    created = None
    if reply is not None:
        created = messages.create_in(
            tx, session_id, role=Role.ASSISTANT, model=reply.model, provider=reply.provider
        )
    return Started(
        turn_id,
        token,
        tuple(taken),
        note,
        message,
        claim.pending - len(stale) - len(taken),
        None if claim.delivery is None else dict(json.loads(claim.delivery)),
        claim.now,
        tuple(stale),
        tuple(repaired),
        created,
    )


@dataclass(frozen=True, slots=True)
class Steered:
    """Input a running turn took: stored as one more user message (None if nothing was
    pending). ``lost``: the turn no longer holds the claim, or is no longer running."""

    inputs: tuple[InputRow, ...] = ()
    user_message: Message | None = None
    remaining: int = 0
    stale: tuple[str, ...] = ()
    lost: bool = False


def steer_turn(
    tx: Tx,
    *,
    messages: MessageService,
    session_id: str,
    owner: str,
    token: int,
    turn_id: str,
) -> Steered:
    """Consume the session's pending input into the running turn ``turn_id`` (one more user
    message, stored through ``messages``); the claim must still be (``owner``, ``token``)."""
    conn = tx.conn
    claim = lock_session(conn, session_id)
    if claim is None or claim.owner != owner or claim.token != token:
        return Steered(lost=True)
    running = conn.execute(
        select(dispatch_turns.c.cancel_requested).where(
            dispatch_turns.c.id == turn_id, dispatch_turns.c.state == RUNNING
        )
    ).first()
    if running is None:
        return Steered(lost=True)
    if running[0] or not claim.pending:
        return Steered(remaining=claim.pending)  # being cancelled: input waits for the next
    pending, _ = _pending_and_notes(conn, session_id)
    stale = [row.id for row in pending if row.seq <= claim.stale_seq]
    fresh = [row for row in pending if row.seq > claim.stale_seq]
    end_inputs(conn, stale, "stale", claim.now)
    if not fresh:
        return Steered(stale=tuple(stale))
    taken = _within_budget(fresh)
    text = "\n\n".join(row.text for row in taken)
    _consume(conn, taken, turn_id)
    conn.execute(
        update(dispatch_turns)
        .where(dispatch_turns.c.id == turn_id)
        .values(inputs=dispatch_turns.c.inputs + len(taken))
    )
    message = create_user_message(tx, messages, session_id, text)
    remaining = claim.pending - len(stale) - len(taken)
    return Steered(tuple(taken), message, remaining, tuple(stale))


@dataclass(frozen=True, slots=True)
class Finished:
    """What ``finish_turn`` recorded. ``recorded``: the turn ended here with the outcome
    given, and so did each of its inputs; otherwise it had been ended elsewhere (a reset, a
    repair) and ``outcomes`` holds each input's final state. ``remaining``: inputs still
    pending; ``released``: the token of the claim released with it (None: kept). ``gone``:
    the session was deleted, and the turn and its inputs with it."""

    recorded: bool
    outcomes: Mapping[str, str]
    remaining: int
    released: int | None
    gone: bool = False


def finish_turn(
    tx: Tx,
    *,
    session_id: str,
    owner: str,
    turn_id: str,
    outcome: str,
    release: bool,
) -> Finished:
    """Record the end of turn ``turn_id`` (a no-op if it was already ended elsewhere) and,
    with ``release``, give up the session's claim when nothing is left to run there."""
    conn = tx.conn
    claim = lock_session(conn, session_id)
    if claim is None:
        return Finished(False, {}, 0, None, gone=True)
    ended = conn.execute(
        update(dispatch_turns)
        .where(dispatch_turns.c.id == turn_id, dispatch_turns.c.state == RUNNING)
        .values(state=outcome, ended_at=claim.now)
    )
    recorded = bool(ended.rowcount)
    outcomes: dict[str, str] = {}
    if recorded:
        conn.execute(
            update(dispatch_inputs)
            .where(dispatch_inputs.c.turn_id == turn_id, dispatch_inputs.c.state == RUNNING)
            .values(state=outcome, ended_at=claim.now)
        )
    else:
        outcomes = dict(
            conn.execute(
                select(dispatch_inputs.c.id, dispatch_inputs.c.state).where(
                    dispatch_inputs.c.turn_id == turn_id
                )
            ).all()
        )
    still_running = claim.running - (1 if recorded else 0)
    released = None
    idle = claim.pending == 0 and still_running == 0
    if (
        release
        and idle
        and claim.owner == owner
        and release_claim_row(conn, session_id, owner, claim)
    ):
        released = claim.token
    return Finished(recorded, outcomes, claim.pending, released)


# -- internals ------------------------------------------------------------------------------------


def _hold_claim(
    conn: Connection, session_id: str, owner: str, claim: Claim, ttl: float
) -> tuple[int, list[str]]:
    """Keep or take the claim; a takeover repairs the previous holder's turns. A claim of
    this owner's with more than half its lease left is not rewritten."""
    repaired: list[str] = []
    token = claim.token
    if claim.owner == owner:
        assert claim.expires_at is not None
        if (claim.expires_at - claim.now).total_seconds() > ttl / 2:
            return token, repaired
    else:
        token += 1
        if claim.running:
            t = dispatch_turns.c
            repaired = interrupt_turns(
                conn, (t.session_id == session_id) & (t.owner != owner), claim.now
            )
    conn.execute(
        update(dispatch_sessions)
        .where(dispatch_sessions.c.session_id == session_id)
        .values(owner=owner, token=token, expires_at=claim.now + timedelta(seconds=ttl))
    )
    return token, repaired


def _pending_and_notes(
    conn: Connection, session_id: str
) -> tuple[list[InputRow], list[tuple[str, str]]]:
    """The session's pending inputs, oldest first, and the (id, text) of inputs ``SUMMARIZE``
    dropped that no turn's note carried yet — in one query."""
    i = dispatch_inputs.c
    owed = i.summarized.is_(True) & i.note_turn_id.is_(None)
    rows = conn.execute(
        select(i.id, i.seq, i.key, i.payload, i.created_at, i.state)
        .where(i.session_id == session_id, or_(i.state == PENDING, owed))
        .order_by(i.seq)
    ).all()
    pending: list[InputRow] = []
    notes: list[tuple[str, str]] = []
    for input_id, seq, key, payload, created_at, state in rows:
        data = json.loads(payload)
        if state == PENDING:
            pending.append(
                InputRow(input_id, seq, key, data["text"], data.get("metadata"), created_at)
            )
        else:
            notes.append((input_id, str(data["text"])))
    return pending, notes


def _within_budget(rows: list[InputRow]) -> list[InputRow]:
    """The oldest rows whose texts fit in one turn (always at least one)."""
    taken = rows[:1]
    size = len(rows[0].text)
    for row in rows[1:]:
        size += len(row.text) + 2
        if size > MAX_TURN_CHARS:
            break
        taken.append(row)
    return taken


def _consume(conn: Connection, rows: Sequence[InputRow], turn_id: str) -> None:
    conn.execute(
        update(dispatch_inputs)
        .where(dispatch_inputs.c.id.in_([row.id for row in rows]))
        .values(state=RUNNING, turn_id=turn_id)
    )


_NOTE_LINE = 200


def _summary_note(conn: Connection, notes: list[tuple[str, str]], turn_id: str) -> str:
    """The note about input ``SUMMARIZE`` dropped since the last note; marks it noted."""
    if not notes:
        return ""
    conn.execute(
        update(dispatch_inputs)
        .where(dispatch_inputs.c.id.in_([input_id for input_id, _ in notes]))
        .values(note_turn_id=turn_id)
    )
    lines = []
    for _, text in notes:
        stripped = text.strip()
        first = stripped.splitlines()[0] if stripped else ""
        if len(first) > _NOTE_LINE:
            first = first[: _NOTE_LINE - 1] + "…"
        lines.append(f"- {first}")
    count = len(notes)
    head = f"[{count} earlier message{'s' if count > 1 else ''} dropped (queue full); first lines:]"
    return "\n".join([head, *lines])
