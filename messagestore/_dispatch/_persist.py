"""The dispatcher's SQL, part one: running transactions, the locked per-session row, submit.

Every public function here and in ``_persist_turns`` / ``_persist_control`` that takes a ``Tx``
(except the runners) is the body of ONE transaction, run through ``Store.transaction`` by
``run_transaction`` or ``run_read``. Each transaction that changes a session's input or turns
first locks its ``dispatch_sessions`` row (``lock_session``), which also returns what is pending
and running and the database clock, so per-session counts are exact and locks are always taken
in one order. Claims (owner, expiry, a fencing token) decide which process runs a session. The
story: docs/ARCHITECTURE.md, "The life of one input through the dispatcher".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .._database._tx import Tx
from .._errors import QueueFull, SessionNotFound, StoreClosed
from .._messages import MessageService
from .._model import Message, Role, Text, utc_now
from .._store import Store
from ._config import DropPolicy, QueueConfig, QueueMode
from ._tables import dispatch_inputs, dispatch_routes, dispatch_sessions, dispatch_turns

__all__ = [
    "FAILED",
    "INTERRUPTED",
    "PENDING",
    "RUNNING",
    "Claim",
    "Submitted",
    "create_user_message",
    "drain",
    "encode_payload",
    "end_inputs",
    "insert_ignoring_conflict",
    "interrupt_turns",
    "lock_session",
    "pending_ids",
    "release_claim_row",
    "require_session",
    "run_read",
    "run_transaction",
    "submit_input",
]

T = TypeVar("T")

PENDING = "pending"
RUNNING = "running"
INTERRUPTED = "interrupted"  # a turn whose process died (its inputs end FAILED)
FAILED = "failed"

# == running transactions =========================================================================


class _Abandoned:
    """Whether a caller of ``run_transaction`` on a store stopped waiting for its transaction
    (kept per store: ``Store.feature_state``)."""

    __slots__ = ("any",)

    def __init__(self) -> None:
        self.any = False


_ABANDONED = object()  # this module's key for its state on a store


async def run_transaction(store: Store, fn: Callable[[Tx], T]) -> T:
    """Run ``fn`` as one write transaction of the store (``Store.transaction``: in the same
    first-in-first-out order as the store's own writes); a cancelled caller never cuts it in
    half. User messages it creates (``create_user_message``) are announced through the change
    feed when it commits. ``drain`` waits for the ones whose caller stopped waiting."""
    try:
        return await store.transaction(fn)
    except asyncio.CancelledError:
        store.feature_state(_ABANDONED, _Abandoned).any = True
        raise


async def run_read(store: Store, fn: Callable[[Tx], T]) -> T:
    """Run ``fn`` as one read-only transaction (one consistent snapshot)."""
    return await store.transaction(fn, write=False)


async def drain(store: Store) -> None:
    """Wait until every transaction started through ``run_transaction`` on ``store`` ended.

    Only those whose caller stopped waiting can still run: if there were any, one empty
    write transaction, which runs after every write submitted before it, waits them out. A
    store that closed meanwhile waits for them itself (``Store.close``).
    """
    abandoned = store.feature_state(_ABANDONED, _Abandoned)
    if not abandoned.any or store.closed:
        return
    abandoned.any = False
    try:
        await store.transaction(_nothing)
    except StoreClosed:
        return


def _nothing(tx: Tx) -> None:
    """An empty write transaction (see ``drain``)."""


# == the user message of a turn ===================================================================


def create_user_message(tx: Tx, messages: MessageService, session_id: str, text: str) -> Message:
    """Create the user message of a turn (``text``) in the running transaction, exactly as
    ``MessageService.create`` does (``create_in``: revision, announcement at commit)."""
    return messages.create_in(tx, session_id, role=Role.USER, parts=[Text(text)])


# == the locked per-session row ===================================================================


@dataclass(frozen=True, slots=True)
class Claim:
    """A session's ``dispatch_sessions`` row as locked by the current transaction, with the
    number of its inputs pending and turns running, the database's clock, and (when asked)
    the newest delivery context routed to it."""

    owner: str | None
    token: int
    expires_at: datetime | None
    stale_seq: int
    pending: int
    running: int
    now: datetime
    delivery: str | None = None

    def held_by_other(self, owner: str) -> bool:
        """True while another process's claim is live."""
        return (
            self.owner is not None
            and self.owner != owner
            and self.expires_at is not None
            and self.expires_at >= self.now
        )


def lock_session(conn: Connection, session_id: str, *, delivery: bool = False) -> Claim | None:
    """Lock the session's dispatcher row, created on its first use; None if no such session.

    One statement when the row exists (the common case). A session that does not exist
    cannot have a row (it would have gone with the session): creating one then fails the
    foreign key, inside a savepoint so the transaction can go on.
    """
    claim = _select_claim(conn, session_id, delivery)
    if claim is not None:
        return claim
    try:
        with conn.begin_nested():
            insert_ignoring_conflict(conn, dispatch_sessions, {"session_id": session_id})
    except IntegrityError:
        return None
    return _select_claim(conn, session_id, delivery)


def _select_claim(conn: Connection, session_id: str, delivery: bool) -> Claim | None:
    d = dispatch_sessions.c
    pending = (
        select(func.count())
        .where(dispatch_inputs.c.session_id == d.session_id, dispatch_inputs.c.state == PENDING)
        .scalar_subquery()
    )
    running = (
        select(func.count())
        .where(dispatch_turns.c.session_id == d.session_id, dispatch_turns.c.state == RUNNING)
        .scalar_subquery()
    )
    columns: list[Any] = [d.owner, d.token, d.expires_at, d.stale_seq, pending, running]
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        columns.append(func.now())
    if delivery:
        columns.append(
            select(dispatch_routes.c.delivery)
            .where(
                dispatch_routes.c.session_id == d.session_id,
                dispatch_routes.c.delivery.is_not(None),
            )
            .order_by(dispatch_routes.c.updated_at.desc())
            .limit(1)
            .scalar_subquery()
        )
    query = select(*columns).where(d.session_id == session_id)
    row = conn.execute(query.with_for_update(of=dispatch_sessions)).first()
    if row is None:
        return None
    owner, token, expires_at, stale_seq, pending_n, running_n, *rest = row
    now = rest.pop(0) if postgres else utc_now()
    return Claim(
        owner,
        token,
        expires_at,
        stale_seq,
        pending_n,
        running_n,
        now,
        rest[0] if delivery else None,
    )


def require_session(conn: Connection, session_id: str) -> Claim:
    """``lock_session``, raising ``SessionNotFound`` for a missing session."""
    claim = lock_session(conn, session_id)
    if claim is None:
        raise SessionNotFound(session_id)
    return claim


# == small shared statements =======================================================================


def insert_ignoring_conflict(conn: Connection, table: Any, values: Mapping[str, Any]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` on either backend."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


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


def release_claim_row(conn: Connection, session_id: str, owner: str, claim: Claim) -> bool:
    """Give up ``owner``'s claim, locked as ``claim``; the caller checked nothing is left."""
    done = conn.execute(
        update(dispatch_sessions)
        .where(
            dispatch_sessions.c.session_id == session_id,
            dispatch_sessions.c.owner == owner,
            dispatch_sessions.c.token == claim.token,
        )
        .values(owner=None, expires_at=claim.now)
    )
    return bool(done.rowcount)


def encode_payload(text: str, metadata: Mapping[str, Any] | None) -> str:
    """An input's text and metadata as ASCII JSON (any text round-trips, NUL included)."""
    return json.dumps({"text": text, "metadata": metadata}, ensure_ascii=True)


# == submit ========================================================================================


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
    tx: Tx,
    *,
    input_id: str,
    session_id: str,
    payload: str,
    key: str | None,
    config: QueueConfig,
) -> Submitted:
    """Store one input for the session, applying the cap and ``INTERRUPT``; raise
    ``SessionNotFound`` or ``QueueFull`` (``DropPolicy.NEW``: nothing is stored)."""
    conn = tx.conn
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
    now = claim.now
    dropped: list[str] = []
    interrupted = False
    if config.mode is QueueMode.INTERRUPT and claim.running:
        conn.execute(
            update(dispatch_turns)
            .where(dispatch_turns.c.session_id == session_id, dispatch_turns.c.state == RUNNING)
            .values(cancel_requested=True)
        )
        interrupted = True
        if claim.pending:
            dropped = pending_ids(conn, session_id)
            end_inputs(conn, dropped, "dropped", now)
    waiting = claim.pending - len(dropped)
    if waiting >= config.cap:
        if config.drop is DropPolicy.NEW:
            raise QueueFull(session_id, config.cap)
        oldest = pending_ids(conn, session_id, limit=waiting - config.cap + 1)
        conn.execute(
            update(dispatch_inputs)
            .where(dispatch_inputs.c.id.in_(oldest))
            .values(state="dropped", ended_at=now, summarized=config.drop is DropPolicy.SUMMARIZE)
        )
        dropped.extend(oldest)
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
    return Submitted(
        input_id, int(primary_key[0]), now, dropped=tuple(dropped), interrupted=interrupted
    )
