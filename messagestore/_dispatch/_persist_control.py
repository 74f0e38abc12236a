"""The dispatcher's SQL for control and upkeep: stop and cancel, reset, claims (renew,
release), the poll, the repair of turns whose process died, and routes.

Same rules as ``_persist``: each public function is the body of ONE transaction (or one read),
run through ``run_transaction`` / ``run_read``; a session's ``dispatch_sessions`` row is
locked before its inputs or turns change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update

from .._clock import database_now
from .._database._tx import Tx
from .._model import utc_now
from ._persist import (
    PENDING,
    RUNNING,
    end_inputs,
    insert_ignoring_conflict,
    interrupt_turns,
    lock_session,
    pending_ids,
    release_claim_row,
    require_session,
)
from ._receipts import GONE
from ._tables import dispatch_inputs, dispatch_routes, dispatch_sessions, dispatch_turns

__all__ = [
    "Polled",
    "Stopped",
    "cancel_turns",
    "delivery_of",
    "existing_turns",
    "input_states",
    "poll",
    "release_all",
    "release_claims",
    "renew_claims",
    "repair_turns",
    "route_insert",
    "route_lookup",
    "stop_session",
]


# == stop and cancel ==============================================================================


@dataclass(frozen=True, slots=True)
class Stopped:
    """What a stop or cancel recorded: pending inputs ended (``ended``, each now ``state``)
    and running turns asked to cancel (``flagged``; their process cancels them)."""

    ended: tuple[str, ...] = ()
    state: str = ""
    flagged: tuple[str, ...] = ()

    @property
    def anything(self) -> bool:
        return bool(self.ended or self.flagged)


def stop_session(
    tx: Tx, *, session_id: str, discard: str | None, oldest_only: bool, stale: bool
) -> Stopped:
    """Ask the session's running turns (or only the oldest one) to cancel; end its pending
    input with outcome ``discard`` (None: keep it); with ``stale``, move the stale cutoff past
    every input submitted so far."""
    conn = tx.conn
    claim = require_session(conn, session_id)
    now = claim.now
    if stale:
        newest = conn.execute(
            select(func.max(dispatch_inputs.c.seq)).where(
                dispatch_inputs.c.session_id == session_id
            )
        ).scalar_one()
        if newest is not None and newest > claim.stale_seq:
            conn.execute(
                update(dispatch_sessions)
                .where(dispatch_sessions.c.session_id == session_id)
                .values(stale_seq=newest)
            )
    ended: list[str] = []
    if discard is not None and claim.pending:
        ended = pending_ids(conn, session_id)
        end_inputs(conn, ended, discard, now)
    query = (
        select(dispatch_turns.c.id)
        .where(
            dispatch_turns.c.session_id == session_id,
            dispatch_turns.c.state == RUNNING,
            dispatch_turns.c.cancel_requested.is_(False),
        )
        .order_by(dispatch_turns.c.started_at, dispatch_turns.c.id)
    )
    if oldest_only:
        query = query.limit(1)
    flagged = list(conn.execute(query).scalars()) if claim.running else []
    if flagged:
        conn.execute(
            update(dispatch_turns)
            .where(dispatch_turns.c.id.in_(flagged))
            .values(cancel_requested=True)
        )
    return Stopped(tuple(ended), discard or "", tuple(flagged))


def cancel_turns(tx: Tx, *, turn_ids: Sequence[str]) -> dict[str, str]:
    """End running turns as ``cancelled`` now (``reset``: their completions are ignored).

    Returns each of their inputs with its final state.
    """
    conn = tx.conn
    if not turn_ids:
        return {}
    ids = list(turn_ids)
    session_ids = conn.execute(
        select(dispatch_turns.c.session_id).where(dispatch_turns.c.id.in_(ids)).distinct()
    ).scalars()
    for session_id in sorted(session_ids):
        lock_session(conn, session_id)
    now = database_now(conn)
    conn.execute(
        update(dispatch_turns)
        .where(dispatch_turns.c.id.in_(ids), dispatch_turns.c.state == RUNNING)
        .values(state="cancelled", ended_at=now)
    )
    conn.execute(
        update(dispatch_inputs)
        .where(dispatch_inputs.c.turn_id.in_(ids), dispatch_inputs.c.state == RUNNING)
        .values(state="cancelled", ended_at=now)
    )
    return dict(
        conn.execute(
            select(dispatch_inputs.c.id, dispatch_inputs.c.state).where(
                dispatch_inputs.c.turn_id.in_(ids)
            )
        ).all()
    )


# == claims =======================================================================================


def renew_claims(tx: Tx, *, owner: str, claims: Mapping[str, int], ttl: float) -> list[str]:
    """Push this owner's claims (session -> the token it believes it holds) to ``ttl``
    seconds from now.

    Returns the sessions whose claim was lost: another process holds it now, or held it in
    between (it is free under a newer token), or the session no longer exists. This process
    must stop running turns there. A newer token under this owner is its own re-acquisition
    and not a loss.
    """
    conn = tx.conn
    ids = sorted(claims)
    if not ids:
        return []
    now = database_now(conn)
    rows = {
        sid: (row_owner, token)
        for sid, row_owner, token in conn.execute(
            select(
                dispatch_sessions.c.session_id,
                dispatch_sessions.c.owner,
                dispatch_sessions.c.token,
            )
            .where(dispatch_sessions.c.session_id.in_(ids))
            .order_by(dispatch_sessions.c.session_id)
            .with_for_update()
        ).all()
    }
    conn.execute(
        update(dispatch_sessions)
        .where(dispatch_sessions.c.session_id.in_(ids), dispatch_sessions.c.owner == owner)
        .values(expires_at=now + timedelta(seconds=ttl))
    )
    lost = []
    for sid in ids:
        found = rows.get(sid)
        if found is None:
            lost.append(sid)
            continue
        row_owner, token = found
        if row_owner not in (None, owner) or (row_owner is None and token != claims[sid]):
            lost.append(sid)
    return lost


def release_claims(tx: Tx, *, owner: str, claims: Mapping[str, int]) -> list[tuple[str, int]]:
    """Give up each of ``owner``'s claims (session -> token) whose session has nothing
    pending or running. Returns the claims that are not this owner's any more: released
    here, earlier, or taken over (the rest were kept: work arrived)."""
    conn = tx.conn
    gone: list[tuple[str, int]] = []
    for session_id in sorted(claims):
        token = claims[session_id]
        claim = lock_session(conn, session_id)
        if claim is None or claim.owner != owner or claim.token != token:
            gone.append((session_id, token))
        elif not claim.pending and not claim.running:
            release_claim_row(conn, session_id, owner, claim)
            gone.append((session_id, token))
    return gone


def release_all(tx: Tx, *, owner: str) -> int:
    """Release every claim of ``owner`` with no running turn (the dispatcher closes)."""
    conn = tx.conn
    now = database_now(conn)
    running = (
        select(dispatch_turns.c.id)
        .where(
            dispatch_turns.c.session_id == dispatch_sessions.c.session_id,
            dispatch_turns.c.state == RUNNING,
        )
        .exists()
    )
    done = conn.execute(
        update(dispatch_sessions)
        .where(dispatch_sessions.c.owner == owner, ~running)
        .values(owner=None, expires_at=now)
    )
    return int(done.rowcount)


# == the poll =====================================================================================


@dataclass(frozen=True, slots=True)
class Polled:
    """One poll's findings (read-only; ``now`` is the database clock).

    ``pending``: (session, count, oldest input's submit time) for sessions with pending input
    that this owner may run (claim free, expired or its own), oldest first. ``mine``: this
    owner's running turns and whether each was asked to cancel. ``orphans``: running turns of
    other owners whose claim is no longer theirs and live. ``outcomes``: final states of the
    inputs asked about (``GONE`` for those deleted with their session). ``vanished``: turns
    asked about whose row was deleted with their session.
    """

    now: datetime
    pending: list[tuple[str, int, datetime]] = field(default_factory=list)
    mine: dict[str, bool] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    vanished: list[str] = field(default_factory=list)


def poll(
    tx: Tx,
    *,
    owner: str,
    input_ids: Sequence[str],
    limit: int,
    turn_ids: Sequence[str] = (),
) -> Polled:
    """What a dispatcher needs to learn from other processes and from its own past.

    ``turn_ids``: turns this process runs whose start committed before the poll began; those
    whose row is gone (their session was deleted) are reported as ``vanished``."""
    conn = tx.conn
    now = database_now(conn)
    d = dispatch_sessions.c
    claimable = or_(d.owner.is_(None), d.owner == owner, d.expires_at < now)
    first = func.min(dispatch_inputs.c.created_at)
    pending = conn.execute(
        select(dispatch_inputs.c.session_id, func.count(), first)
        .join(dispatch_sessions, d.session_id == dispatch_inputs.c.session_id)
        .where(dispatch_inputs.c.state == PENDING, claimable)
        .group_by(dispatch_inputs.c.session_id)
        .order_by(first)
        .limit(limit)
    ).all()
    t = dispatch_turns.c
    mine = dict(
        conn.execute(
            select(t.id, t.cancel_requested).where(t.owner == owner, t.state == RUNNING)
        ).all()
    )
    dead = or_(d.owner.is_(None), d.owner != t.owner, d.expires_at < now)
    orphans = list(
        conn.execute(
            select(t.id)
            .join(dispatch_sessions, d.session_id == t.session_id)
            .where(t.state == RUNNING, t.owner != owner, dead)
        ).scalars()
    )
    existing = existing_turns(tx, turn_ids) if turn_ids else set()
    return Polled(
        now,
        [(sid, int(n), at) for sid, n, at in pending],
        mine,
        orphans,
        input_states(tx, ids=input_ids),
        [turn_id for turn_id in turn_ids if turn_id not in existing],
    )


def input_states(tx: Tx, *, ids: Sequence[str]) -> dict[str, str]:
    """The final states of those of ``ids`` that have one (read); ``GONE`` for an id whose
    row no longer exists (an input row is only ever deleted with its session)."""
    conn = tx.conn
    found: dict[str, str] = {}
    ids = list(ids)
    for at in range(0, len(ids), 500):
        chunk = ids[at : at + 500]
        rows = conn.execute(
            select(dispatch_inputs.c.id, dispatch_inputs.c.state).where(
                dispatch_inputs.c.id.in_(chunk)
            )
        ).all()
        states = dict(rows)
        for input_id in chunk:
            state = states.get(input_id, GONE)
            if state not in (PENDING, RUNNING):
                found[input_id] = state
    return found


def existing_turns(tx: Tx, turn_ids: Sequence[str]) -> set[str]:
    """Those of ``turn_ids`` whose row still exists (a turn row is only ever deleted with its
    session)."""
    conn = tx.conn
    ids = list(turn_ids)
    found: set[str] = set()
    for at in range(0, len(ids), 500):
        chunk = ids[at : at + 500]
        found.update(
            conn.execute(select(dispatch_turns.c.id).where(dispatch_turns.c.id.in_(chunk)))
            .scalars()
            .all()
        )
    return found


def repair_turns(
    tx: Tx, *, owner: str, turn_ids: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """Mark turns interrupted whose process died (inputs end ``failed``).

    A turn of another owner is repaired only if, with its session locked, its claim is still
    not live in that owner's hands; a turn of ``owner`` itself (one this process no longer
    runs: its end could not be recorded) always is. Returns the repaired turns and each of
    their inputs with its final state.
    """
    conn = tx.conn
    if not turn_ids:
        return [], {}
    t = dispatch_turns.c
    rows = conn.execute(
        select(t.id, t.session_id, t.owner).where(t.id.in_(list(turn_ids)), t.state == RUNNING)
    ).all()
    claims = {sid: lock_session(conn, sid) for sid in sorted({row[1] for row in rows})}
    now = database_now(conn)
    repair = []
    for turn_id, session_id, turn_owner in rows:
        claim = claims[session_id]
        live = claim is not None and claim.owner == turn_owner and claim.held_by_other(owner)
        if turn_owner == owner or not live:
            repair.append(turn_id)
    repaired = interrupt_turns(conn, t.id.in_(repair), now) if repair else []
    if not repaired:
        return [], {}
    states = dict(
        conn.execute(
            select(dispatch_inputs.c.id, dispatch_inputs.c.state).where(
                dispatch_inputs.c.turn_id.in_(repaired)
            )
        ).all()
    )
    return repaired, states


# == routes =======================================================================================


def route_lookup(tx: Tx, *, key: str, delivery: str | None) -> str | None:
    """The session routed to by ``key`` (its delivery context updated), or None."""
    conn = tx.conn
    session_id: str | None = conn.execute(
        select(dispatch_routes.c.session_id).where(dispatch_routes.c.key == key)
    ).scalar_one_or_none()
    if session_id is not None and delivery is not None:
        conn.execute(
            update(dispatch_routes)
            .where(dispatch_routes.c.key == key)
            .values(delivery=delivery, updated_at=utc_now())
        )
    return session_id


def route_insert(tx: Tx, *, key: str, session_id: str, delivery: str | None) -> str:
    """Route ``key`` to ``session_id`` unless a concurrent first sight won; return the
    session the key routes to."""
    conn = tx.conn
    now = utc_now()
    values = {"key": key, "session_id": session_id, "delivery": delivery}
    insert_ignoring_conflict(conn, dispatch_routes, values | {"created_at": now, "updated_at": now})
    winner = route_lookup(tx, key=key, delivery=delivery)
    assert winner is not None
    return winner


def delivery_of(tx: Tx, *, session_id: str) -> Mapping[str, Any] | None:
    """The newest delivery context of the routes to the session (read)."""
    conn = tx.conn
    value = conn.execute(
        select(dispatch_routes.c.delivery)
        .where(dispatch_routes.c.session_id == session_id, dispatch_routes.c.delivery.is_not(None))
        .order_by(dispatch_routes.c.updated_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if value is None else dict(json.loads(value))
