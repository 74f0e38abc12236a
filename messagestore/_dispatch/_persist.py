"""The dispatcher's SQL: submit, start, steer and finish a turn (control and polls are in
``_persist_control``).

Every public function here except the runners is the body of exactly ONE transaction: a
synchronous function over a ``sqlalchemy.engine.Connection`` made of SQLAlchemy Core
statements (bound parameters only), run by ``run_transaction`` (writes) or ``run_read``.
Every transaction that changes a session's input or turns first locks the session's
``dispatch_sessions`` row (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
serializes all writers), so per-session counts — the cap, what is pending — are exact, and
locks are always taken in the same order (that row, then inputs, turns, messages).

Claims: the ``dispatch_sessions`` row names the process (``owner``, one random id per running
dispatcher) whose turns run the session, until ``expires_at``, under a fencing ``token`` that
grows by one with every takeover. A start either finds the claim its own, or free or expired
(and takes it over, bumping the token and marking turns of the previous holder that were still
"running" as interrupted), or held by another live process (and changes nothing). Steering
and finishing check (owner, token) of their turn. Lease times use the database server's clock
on PostgreSQL and this machine's on SQLite (every process on a SQLite file shares it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from pubsub import EventType

from .._codec import encode_parts
from .._database._engine import reader
from .._database._schema import (
    dispatch_inputs,
    dispatch_routes,
    dispatch_sessions,
    dispatch_turns,
    messages,
    sessions,
)
from .._errors import QueueFull, SessionNotFound, StoreClosed
from .._model import Message, Role, Text, utc_now
from .._store import Store
from ._config import MAX_TURN_CHARS, DropPolicy, QueueConfig, QueueMode

__all__ = [
    "Busy",
    "Empty",
    "Finished",
    "Gone",
    "InputRow",
    "Started",
    "Steered",
    "Submitted",
    "announce_created",
    "drain",
    "finish_turn",
    "insert_user_message",
    "run_read",
    "run_transaction",
    "start_turn",
    "steer_turn",
    "submit_input",
]

T = TypeVar("T")

PENDING = "pending"
RUNNING = "running"
INTERRUPTED = "interrupted"  # a turn whose process died (its inputs end FAILED)
FAILED = "failed"

# == running transactions =========================================================================

_inflight: weakref.WeakKeyDictionary[Store, set[asyncio.Task[Any]]] = weakref.WeakKeyDictionary()
_gates: weakref.WeakKeyDictionary[Store, asyncio.Lock] = weakref.WeakKeyDictionary()
_readers: weakref.WeakKeyDictionary[Store, AsyncEngine] = weakref.WeakKeyDictionary()


async def run_transaction(store: Store, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` as one write transaction; a cancelled caller never cuts it in half.

    The transaction runs in a task of its own, awaited through ``asyncio.shield``: if the
    caller is cancelled, it stops waiting and the transaction still commits or rolls back as a
    whole (``drain`` awaits such tasks). On SQLite this process's transactions queue on an
    asyncio lock instead of in SQLite's busy handler, which sleeps.
    """
    if store.closed:
        raise StoreClosed()
    gate = _gates.get(store)
    if gate is None and store.engine.dialect.name == "sqlite":
        gate = _gates[store] = asyncio.Lock()
    return await _owned(store, _write(store.engine, gate, fn))


async def run_read(store: Store, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` as one read-only transaction (a deferred ``BEGIN`` on SQLite), shielded."""
    if store.closed:
        raise StoreClosed()
    engine = _readers.get(store)
    if engine is None:
        engine = _readers[store] = reader(store.engine)
    return await _owned(store, _read(engine, fn))


async def drain(store: Store) -> None:
    """Wait for every transaction started through this module on ``store`` to end."""
    tasks = _inflight.get(store)
    while tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)


async def _owned(store: Store, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.get_running_loop().create_task(work)
    tasks = _inflight.setdefault(store, set())
    tasks.add(task)
    task.add_done_callback(functools.partial(_forget, tasks))
    return await asyncio.shield(task)


def _forget(tasks: set[asyncio.Task[Any]], task: asyncio.Task[Any]) -> None:
    tasks.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a caller that was cancelled no longer asks for it


async def _write(
    engine: AsyncEngine, gate: asyncio.Lock | None, fn: Callable[[Connection], T]
) -> T:
    if gate is None:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    async with gate, engine.begin() as conn:
        return await conn.run_sync(fn)


async def _read(engine: AsyncEngine, fn: Callable[[Connection], T]) -> T:
    async with engine.connect() as conn:
        return await conn.run_sync(fn)


# == the user message of a turn ===================================================================


def insert_user_message(conn: Connection, message: Message) -> None:
    """Insert ``message`` and count it in its session, in the caller's transaction.

    Does what ``Repository.create_message`` does (the row is not stamped with a writer id: a
    user message is never repaired by the recovery sweep, so it is stored as already checked).
    """
    counted = conn.execute(
        update(sessions)
        .where(sessions.c.id == message.session_id)
        .values(message_count=sessions.c.message_count + 1, updated_at=utc_now())
    )
    if counted.rowcount != 1:
        raise SessionNotFound(message.session_id)
    conn.execute(
        insert(messages).values(
            id=message.id,
            session_id=message.session_id,
            role=message.role.value,
            parts=encode_parts(message.parts),
            model=message.model,
            provider=message.provider,
            is_summary_message=message.is_summary_message,
            created_at=message.created_at,
            updated_at=message.updated_at,
        )
    )


async def announce_created(store: Store, message: Message) -> None:
    """Tell subscribers about a message created by a dispatcher transaction (after commit)."""
    await store.messages.broker.publish_must_deliver(EventType.CREATED, message.clone())


# == shared helpers ===============================================================================


@dataclass(frozen=True, slots=True)
class Claim:
    """A session's ``dispatch_sessions`` row, as locked by the current transaction."""

    owner: str | None
    token: int
    expires_at: datetime | None
    stale_seq: int

    def held_by_other(self, owner: str, now: datetime) -> bool:
        return (
            self.owner is not None
            and self.owner != owner
            and self.expires_at is not None
            and self.expires_at >= now
        )


def database_now(conn: Connection) -> datetime:
    """The clock claims are judged by: the server's on PostgreSQL, this machine's on SQLite."""
    if conn.dialect.name == "postgresql":
        value: datetime = conn.execute(select(func.now())).scalar_one()
        return value
    return utc_now()


def insert_ignoring_conflict(conn: Connection, table: Any, values: Mapping[str, Any]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` on either backend."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


def lock_session(conn: Connection, session_id: str) -> Claim | None:
    """Lock the session's dispatcher row (created on first use); None if no such session."""
    exists = conn.execute(
        select(sessions.c.id)
        .where(sessions.c.id == session_id)
        .with_for_update(read=True, key_share=True)
    ).first()
    if exists is None:
        return None
    insert_ignoring_conflict(conn, dispatch_sessions, {"session_id": session_id})
    row = conn.execute(
        select(
            dispatch_sessions.c.owner,
            dispatch_sessions.c.token,
            dispatch_sessions.c.expires_at,
            dispatch_sessions.c.stale_seq,
        )
        .where(dispatch_sessions.c.session_id == session_id)
        .with_for_update()
    ).one()
    return Claim(*row)


def require_session(conn: Connection, session_id: str) -> Claim:
    """``lock_session``, raising ``SessionNotFound`` for a missing session."""
    claim = lock_session(conn, session_id)
    if claim is None:
        raise SessionNotFound(session_id)
    return claim


def pending_count(conn: Connection, session_id: str) -> int:
    """Inputs of the session still waiting for a turn."""
    value: int = conn.execute(
        select(func.count())
        .select_from(dispatch_inputs)
        .where(dispatch_inputs.c.session_id == session_id, dispatch_inputs.c.state == PENDING)
    ).scalar_one()
    return value


def end_inputs(conn: Connection, ids: Sequence[str], state: str, now: datetime) -> None:
    """Give the inputs their outcome (``state``) if they are still pending or running."""
    if ids:
        conn.execute(
            update(dispatch_inputs)
            .where(
                dispatch_inputs.c.id.in_(list(ids)),
                dispatch_inputs.c.state.in_((PENDING, RUNNING)),
            )
            .values(state=state, ended_at=now)
        )


def pending_ids(conn: Connection, session_id: str, *, limit: int | None = None) -> list[str]:
    """The session's pending input ids, oldest first."""
    query = (
        select(dispatch_inputs.c.id)
        .where(dispatch_inputs.c.session_id == session_id, dispatch_inputs.c.state == PENDING)
        .order_by(dispatch_inputs.c.seq)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(conn.execute(query).scalars())


def mark_stale(conn: Connection, session_id: str, claim: Claim, now: datetime) -> list[str]:
    """Pending inputs at or below the stale cutoff become ``stale``; return their ids."""
    if claim.stale_seq <= 0:
        return []
    ids = list(
        conn.execute(
            select(dispatch_inputs.c.id).where(
                dispatch_inputs.c.session_id == session_id,
                dispatch_inputs.c.state == PENDING,
                dispatch_inputs.c.seq <= claim.stale_seq,
            )
        ).scalars()
    )
    end_inputs(conn, ids, "stale", now)
    return ids


def interrupt_turns(conn: Connection, where: Any, now: datetime) -> list[str]:
    """Mark matching running turns interrupted and their inputs failed; return the turn ids."""
    ids = list(
        conn.execute(
            select(dispatch_turns.c.id).where(dispatch_turns.c.state == RUNNING, where)
        ).scalars()
    )
    if ids:
        conn.execute(
            update(dispatch_turns)
            .where(dispatch_turns.c.id.in_(ids), dispatch_turns.c.state == RUNNING)
            .values(state=INTERRUPTED, ended_at=now)
        )
        conn.execute(
            update(dispatch_inputs)
            .where(dispatch_inputs.c.turn_id.in_(ids), dispatch_inputs.c.state == RUNNING)
            .values(state=FAILED, ended_at=now)
        )
    return ids


def encode_payload(text: str, metadata: Mapping[str, Any] | None) -> str:
    """An input's text and metadata as ASCII JSON (any text round-trips, NUL included)."""
    return json.dumps({"text": text, "metadata": metadata}, ensure_ascii=True)


# == submit =======================================================================================


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit_input`` committed. ``duplicate``: ``key`` named an existing input, which
    is reported (``input_id``, ``state``) and nothing changed. ``dropped``: inputs removed by
    the cap or by an interrupt (outcome ``DROPPED``). ``interrupted``: running turns of the
    session were asked to cancel (``INTERRUPT`` mode)."""

    input_id: str
    seq: int
    created_at: datetime
    duplicate: bool = False
    state: str = PENDING
    dropped: tuple[str, ...] = ()
    interrupted: bool = False


def submit_input(
    conn: Connection,
    *,
    input_id: str,
    session_id: str,
    payload: str,
    key: str | None,
    config: QueueConfig,
) -> Submitted:
    """Store one input for the session, applying the cap and ``INTERRUPT``; raise
    ``SessionNotFound`` or ``QueueFull`` (``DropPolicy.NEW``: nothing is stored)."""
    claim = require_session(conn, session_id)
    if key is not None:
        found = conn.execute(
            select(
                dispatch_inputs.c.id,
                dispatch_inputs.c.seq,
                dispatch_inputs.c.created_at,
                dispatch_inputs.c.state,
            ).where(dispatch_inputs.c.session_id == session_id, dispatch_inputs.c.key == key)
        ).first()
        if found is not None:
            return Submitted(found[0], found[1], found[2], duplicate=True, state=found[3])
    now = database_now(conn)
    dropped: list[str] = []
    interrupted = False
    if config.mode is QueueMode.INTERRUPT:
        running = conn.execute(
            update(dispatch_turns)
            .where(dispatch_turns.c.session_id == session_id, dispatch_turns.c.state == RUNNING)
            .values(cancel_requested=True)
        )
        if running.rowcount:
            interrupted = True
            dropped = pending_ids(conn, session_id)
            end_inputs(conn, dropped, "dropped", now)
    waiting = pending_count(conn, session_id)
    if waiting >= config.cap:
        if config.drop is DropPolicy.NEW:
            raise QueueFull(session_id, config.cap)
        oldest = pending_ids(conn, session_id, limit=waiting - config.cap + 1)
        if config.drop is DropPolicy.SUMMARIZE:
            conn.execute(
                update(dispatch_inputs)
                .where(dispatch_inputs.c.id.in_(oldest))
                .values(summarized=True)
            )
        end_inputs(conn, oldest, "dropped", now)
        dropped.extend(oldest)
    del claim  # locked for the count; nothing of it changes here
    result = conn.execute(
        insert(dispatch_inputs).values(
            id=input_id,
            session_id=session_id,
            key=key,
            payload=payload,
            state=PENDING,
            created_at=now,
        )
    )
    primary_key = result.inserted_primary_key
    assert primary_key is not None
    seq = int(primary_key[0])
    return Submitted(input_id, seq, now, dropped=tuple(dropped), interrupted=interrupted)


# == start, steer, finish =========================================================================


@dataclass(frozen=True, slots=True)
class InputRow:
    """One input as a turn receives it."""

    id: str
    seq: int
    key: str | None
    text: str
    metadata: Mapping[str, Any] | None
    submitted_at: datetime


@dataclass(frozen=True, slots=True)
class Busy:
    """Another live process holds the session's claim until ``expires_at`` (database clock;
    ``retry_in`` seconds from the transaction's now)."""

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
    started_at: datetime
    stale: tuple[str, ...] = ()
    interrupted: tuple[str, ...] = ()  # turns of the previous claim holder, repaired


def start_turn(
    conn: Connection,
    *,
    session_id: str,
    owner: str,
    ttl: float,
    take_all: bool,
    turn_id: str,
    message_id: str,
) -> Started | Busy | Empty | Gone:
    """Consume the session's pending input (all of it within ``MAX_TURN_CHARS``, or the
    oldest one) into turn ``turn_id`` and store its user message ``message_id``.

    Takes the session's claim when it is free or expired; changes nothing while another live
    process holds it.
    """
    claim = lock_session(conn, session_id)
    if claim is None:
        return Gone()
    now = database_now(conn)
    if claim.held_by_other(owner, now):
        assert claim.owner is not None and claim.expires_at is not None
        return Busy(claim.owner, (claim.expires_at - now).total_seconds())
    stale = tuple(mark_stale(conn, session_id, claim, now))
    rows = _pending_rows(conn, session_id, None if take_all else 1)
    if not rows:
        return Empty(stale)
    token, repaired = _hold_claim(conn, session_id, owner, claim, now, ttl)
    taken = _within_budget(rows)
    note = _summary_note(conn, session_id, turn_id)
    text = "\n\n".join(([note] if note else []) + [row.text for row in taken])
    created = utc_now()
    message = Message(message_id, session_id, Role.USER, [Text(text)], "", "", created, created)
    conn.execute(
        insert(dispatch_turns).values(
            id=turn_id,
            session_id=session_id,
            owner=owner,
            token=token,
            state=RUNNING,
            user_message_id=message_id,
            inputs=len(taken),
            started_at=now,
        )
    )
    _consume(conn, taken, turn_id)
    insert_user_message(conn, message)
    return Started(
        turn_id,
        token,
        tuple(taken),
        note,
        message,
        pending_count(conn, session_id),
        latest_delivery(conn, session_id),
        now,
        stale,
        tuple(repaired),
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
    conn: Connection,
    *,
    session_id: str,
    owner: str,
    token: int,
    turn_id: str,
    message_id: str,
) -> Steered:
    """Consume the session's pending input into the running turn ``turn_id``."""
    claim = lock_session(conn, session_id)
    running = conn.execute(
        select(dispatch_turns.c.cancel_requested).where(
            dispatch_turns.c.id == turn_id, dispatch_turns.c.state == RUNNING
        )
    ).first()
    if claim is None or claim.owner != owner or claim.token != token or running is None:
        return Steered(lost=True)
    if running[0]:
        return Steered()  # being cancelled: what is pending waits for the next turn
    now = database_now(conn)
    stale = tuple(mark_stale(conn, session_id, claim, now))
    rows = _pending_rows(conn, session_id, None)
    if not rows:
        return Steered(stale=stale)
    taken = _within_budget(rows)
    created = utc_now()
    text = "\n\n".join(row.text for row in taken)
    message = Message(message_id, session_id, Role.USER, [Text(text)], "", "", created, created)
    _consume(conn, taken, turn_id)
    conn.execute(
        update(dispatch_turns)
        .where(dispatch_turns.c.id == turn_id)
        .values(inputs=dispatch_turns.c.inputs + len(taken))
    )
    insert_user_message(conn, message)
    return Steered(tuple(taken), message, pending_count(conn, session_id), stale)


@dataclass(frozen=True, slots=True)
class Finished:
    """What ``finish_turn`` recorded: each input of the turn with its final state (the
    outcome given, or the one recorded earlier by a reset or a repair), what is still
    pending, and the token of the claim released with it (None: kept)."""

    outcomes: Mapping[str, str]
    remaining: int
    released: int | None


def finish_turn(
    conn: Connection,
    *,
    session_id: str,
    owner: str,
    turn_id: str,
    outcome: str,
    release: bool,
) -> Finished:
    """Record the end of turn ``turn_id`` (a no-op if it was already ended elsewhere) and,
    with ``release``, give up the session's claim when nothing is left to run there."""
    claim = lock_session(conn, session_id)
    if claim is None:
        return Finished({}, 0, None)
    now = database_now(conn)
    ended = conn.execute(
        update(dispatch_turns)
        .where(dispatch_turns.c.id == turn_id, dispatch_turns.c.state == RUNNING)
        .values(state=outcome, ended_at=now)
    )
    if ended.rowcount:
        conn.execute(
            update(dispatch_inputs)
            .where(dispatch_inputs.c.turn_id == turn_id, dispatch_inputs.c.state == RUNNING)
            .values(state=outcome, ended_at=now)
        )
    outcomes = dict(
        conn.execute(
            select(dispatch_inputs.c.id, dispatch_inputs.c.state).where(
                dispatch_inputs.c.turn_id == turn_id
            )
        ).all()
    )
    remaining = pending_count(conn, session_id)
    released = None
    if release and remaining == 0 and claim.owner == owner:
        released = release_if_idle(conn, session_id, owner, claim.token, now)
    return Finished(outcomes, remaining, released)


def release_if_idle(
    conn: Connection, session_id: str, owner: str, token: int, now: datetime
) -> int | None:
    """Release the claim (owner, token) if no input is pending and no turn runs there."""
    busy = conn.execute(
        select(dispatch_turns.c.id)
        .where(dispatch_turns.c.session_id == session_id, dispatch_turns.c.state == RUNNING)
        .limit(1)
    ).first()
    if busy is not None or pending_count(conn, session_id):
        return None
    done = conn.execute(
        update(dispatch_sessions)
        .where(
            dispatch_sessions.c.session_id == session_id,
            dispatch_sessions.c.owner == owner,
            dispatch_sessions.c.token == token,
        )
        .values(owner=None, expires_at=now)
    )
    return token if done.rowcount else None


# -- internals ------------------------------------------------------------------------------------


def _hold_claim(
    conn: Connection, session_id: str, owner: str, claim: Claim, now: datetime, ttl: float
) -> tuple[int, list[str]]:
    """Keep (renew) or take the claim; a takeover repairs the previous holder's turns."""
    repaired: list[str] = []
    token = claim.token
    if claim.owner != owner:
        token += 1
        repaired = interrupt_turns(
            conn,
            (dispatch_turns.c.session_id == session_id) & (dispatch_turns.c.owner != owner),
            now,
        )
    conn.execute(
        update(dispatch_sessions)
        .where(dispatch_sessions.c.session_id == session_id)
        .values(owner=owner, token=token, expires_at=now + timedelta(seconds=ttl))
    )
    return token, repaired


def _pending_rows(conn: Connection, session_id: str, limit: int | None) -> list[InputRow]:
    query = (
        select(
            dispatch_inputs.c.id,
            dispatch_inputs.c.seq,
            dispatch_inputs.c.key,
            dispatch_inputs.c.payload,
            dispatch_inputs.c.created_at,
        )
        .where(dispatch_inputs.c.session_id == session_id, dispatch_inputs.c.state == PENDING)
        .order_by(dispatch_inputs.c.seq)
    )
    if limit is not None:
        query = query.limit(limit)
    rows = []
    for input_id, seq, key, payload, created_at in conn.execute(query).all():
        data = json.loads(payload)
        rows.append(InputRow(input_id, seq, key, data["text"], data.get("metadata"), created_at))
    return rows


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


def _summary_note(conn: Connection, session_id: str, turn_id: str) -> str:
    """The note about input ``SUMMARIZE`` dropped since the last note; marks it noted."""
    rows = conn.execute(
        select(dispatch_inputs.c.id, dispatch_inputs.c.payload)
        .where(
            dispatch_inputs.c.session_id == session_id,
            dispatch_inputs.c.summarized.is_(True),
            dispatch_inputs.c.note_turn_id.is_(None),
        )
        .order_by(dispatch_inputs.c.seq)
    ).all()
    if not rows:
        return ""
    conn.execute(
        update(dispatch_inputs)
        .where(dispatch_inputs.c.id.in_([row[0] for row in rows]))
        .values(note_turn_id=turn_id)
    )
    lines = []
    for _, payload in rows:
        text = str(json.loads(payload)["text"]).strip()
        first = text.splitlines()[0] if text else ""
        if len(first) > _NOTE_LINE:
            first = first[: _NOTE_LINE - 1] + "…"
        lines.append(f"- {first}")
    count = len(rows)
    head = f"[{count} earlier message{'s' if count > 1 else ''} dropped (queue full); first lines:]"
    return "\n".join([head, *lines])


def latest_delivery(conn: Connection, session_id: str) -> Mapping[str, Any] | None:
    """The newest delivery context among the routes to the session."""
    value = conn.execute(
        select(dispatch_routes.c.delivery)
        .where(dispatch_routes.c.session_id == session_id, dispatch_routes.c.delivery.is_not(None))
        .order_by(dispatch_routes.c.updated_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if value is None else dict(json.loads(value))
