"""The dispatcher's tables: inbound input, turns, claims, routes (migration revision 0004).

Defined on the store's one ``metadata`` (``messagestore._database._schema``), so that alembic
compares and migrates them with the rest; written only by the dispatcher's ``_persist``
modules, through ``Store.transaction``. Every table hangs off a session and goes with it
(ON DELETE CASCADE).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
)

from .._database._schema import UTCDateTime, metadata

__all__ = ["dispatch_inputs", "dispatch_routes", "dispatch_sessions", "dispatch_turns"]

# One row per session the dispatcher has seen: its claim (which process runs its turns, until
# when, under which fencing token) and its stale cutoff (inputs with ``seq`` at or below
# ``stale_seq`` never run). Every transaction that changes a session's input or turns locks
# this row first, so they serialize per session on PostgreSQL as well.
dispatch_sessions = Table(
    "dispatch_sessions",
    metadata,
    Column(
        "session_id",
        String,
        ForeignKey("sessions.id", ondelete="CASCADE", name="fk_dispatch_sessions_session_id"),
        primary_key=True,
    ),
    Column("owner", String, nullable=True),
    Column("token", BigInteger, nullable=False, server_default="0"),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("stale_seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_dispatch_sessions_owner", "owner"),
)

# Every submitted input. ``state``: pending, running (consumed by the running turn
# ``turn_id``), or its outcome: completed, failed, cancelled, dropped, stale. ``payload`` is
# JSON (text and metadata), so any text round-trips, NUL included. ``summarized``: dropped
# under DropPolicy.SUMMARIZE; ``note_turn_id`` names the turn whose text carried its line.
dispatch_inputs = Table(
    "dispatch_inputs",
    metadata,
    Column(
        "seq",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("id", String, nullable=False, unique=True),
    Column(
        "session_id",
        String,
        ForeignKey("sessions.id", ondelete="CASCADE", name="fk_dispatch_inputs_session_id"),
        nullable=False,
    ),
    Column("key", String, nullable=True),
    Column("payload", Text, nullable=False),
    Column("state", String, nullable=False),
    Column("turn_id", String, nullable=True),
    Column("summarized", Boolean, nullable=False, server_default=false()),
    Column("note_turn_id", String, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Index("ux_dispatch_inputs_session_key", "session_id", "key", unique=True),
    Index("ix_dispatch_inputs_state_session", "state", "session_id", "seq"),
    Index("ix_dispatch_inputs_session_state", "session_id", "state", "seq"),
    Index("ix_dispatch_inputs_turn_id", "turn_id"),
)

# Every turn: who ran it under which claim token, and how it ended (running, completed,
# failed, cancelled, or interrupted: its process died and another repaired it).
dispatch_turns = Table(
    "dispatch_turns",
    metadata,
    Column("id", String, primary_key=True),
    Column(
        "session_id",
        String,
        ForeignKey("sessions.id", ondelete="CASCADE", name="fk_dispatch_turns_session_id"),
        nullable=False,
    ),
    Column("owner", String, nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("state", String, nullable=False),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("user_message_id", String, nullable=True),
    Column("inputs", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Index("ix_dispatch_turns_state", "state", "session_id"),
    Index("ix_dispatch_turns_session_id", "session_id", "started_at"),
)

# External conversations (a channel, a peer, a thread) mapped to sessions, with the latest
# delivery context (JSON) to send the reply with.
dispatch_routes = Table(
    "dispatch_routes",
    metadata,
    Column("key", String, primary_key=True),
    Column(
        "session_id",
        String,
        ForeignKey("sessions.id", ondelete="CASCADE", name="fk_dispatch_routes_session_id"),
        nullable=False,
    ),
    Column("delivery", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_dispatch_routes_session_id", "session_id", "updated_at"),
)
