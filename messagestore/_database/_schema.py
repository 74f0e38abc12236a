"""The tables, defined once; migrations in ``alembic/`` must produce exactly these (with the
dispatcher's, defined on the same ``metadata``: ``messagestore._dispatch._tables``).

Messages carry a database-assigned ``seq`` primary key (creation order); ``id`` is the public
identifier. Every committed change takes the next value of the one ``feed_state`` counter in
its transaction and the row records the revision of its current state; a deletion leaves a
``tombstones`` row, kept for the retention period (``compacted_revision``: the newest pruned).
Why revisions follow commit order: docs/ARCHITECTURE.md, "The database".
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    true,
)

__all__ = [
    "UTCDateTime",
    "feed_state",
    "message_appends",
    "message_streams",
    "messages",
    "metadata",
    "sessions",
    "tombstones",
    "writers",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores ISO text without an offset, which is always
    UTC here and gets its ``tzinfo`` back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: messagestore stores aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", String, primary_key=True),
    Column("title", Text, nullable=False),
    Column("parent_session_id", String, nullable=True),
    Column("message_count", Integer, nullable=False, server_default="0"),
    Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
    Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost", Float, nullable=False, server_default="0"),
    Column("summary_message_id", String, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("revision", BigInteger, nullable=False, server_default="0"),
    Column("created_revision", BigInteger, nullable=False, server_default="0"),
    Index("ix_sessions_created_at", "created_at"),
    Index("ix_sessions_revision", "revision"),
)

messages = Table(
    "messages",
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
        ForeignKey("sessions.id", ondelete="CASCADE", name="fk_messages_session_id"),
        nullable=False,
    ),
    Column("role", String, nullable=False),
    Column("parts", Text, nullable=False),
    Column("model", String, nullable=False, server_default=""),
    Column("provider", String, nullable=False, server_default=""),
    Column("is_summary_message", Boolean, nullable=False, server_default=false()),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # The writer (see ``writers``) that last wrote the row (revision 0002).
    Column("writer_id", String, nullable=True),
    # The revision of the change that wrote this state, and of the one that created the row
    # (revision 0003).
    Column("revision", BigInteger, nullable=False, server_default="0"),
    Column("created_revision", BigInteger, nullable=False, server_default="0"),
    # True while a dead writer could have left the message half done: an assistant message
    # without a finish, or a message whose tool calls may still wait for results. Only these
    # rows are read by a recovery sweep, so opening a store costs O(unfinished messages).
    Column("in_progress", Boolean, nullable=False, server_default=false()),
    Index("ix_messages_session_id_seq", "session_id", "seq"),
    Index("ix_messages_revision", "revision"),
    Index("ix_messages_session_id_revision", "session_id", "revision"),
)
# What a recovery sweep reads: the in-progress rows of one writer.
Index(
    "ix_messages_writer_in_progress",
    messages.c.writer_id,
    sqlite_where=messages.c.in_progress == true(),
    postgresql_where=messages.c.in_progress == true(),
)

# One row per open store: its lease. Heartbeats push ``expires_at`` forward; a row whose
# ``expires_at`` passed belongs to a store that died, hung or closed: a recovery sweep checks
# the messages carrying its id, then deletes the row (revision 0002).
writers = Table(
    "writers",
    metadata,
    Column("id", String, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("host", String, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# The revision counter: one row (id 1). See the module docstring (revision 0003).
feed_state = Table(
    "feed_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
    Column("compacted_revision", BigInteger, nullable=False),
)

# What a deletion leaves for subscribers that resume from an older revision (revision 0003).
# ``kind`` is "message" or "session"; a message's row keeps its session and role.
tombstones = Table(
    "tombstones",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String, nullable=False),
    Column("id", String, nullable=False),
    Column("session_id", String, nullable=True),
    Column("role", String, nullable=True),
    Column("created_at", UTCDateTime, nullable=True),
    Column("deleted_at", UTCDateTime, nullable=False),
    Index("ix_tombstones_deleted_at", "deleted_at"),
    Index("ix_tombstones_session_id_revision", "session_id", "revision"),
)

# Streamed text stored incrementally (revision 0003; see ``_appends``). One row per tick that
# appended text to messages: keyed by the tick's last revision, so rows arrive in key order.
message_appends = Table(
    "message_appends",
    metadata,
    Column("last_revision", BigInteger, primary_key=True, autoincrement=False),
    Column("first_revision", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("payload", Text, nullable=False),
)

# One row per message whose stored state is its base plus appends: from which revision on.
message_streams = Table(
    "message_streams",
    metadata,
    Column("message_id", String, primary_key=True),
    Column("appends_from", BigInteger, nullable=False),
)
