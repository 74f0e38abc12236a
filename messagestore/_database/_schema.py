"""The tables, defined once; migrations in ``alembic/`` must produce exactly these.

Messages carry a database-assigned ``seq`` as their primary key. Creation order is ``seq``
order, so messages created within the same millisecond (or with clocks that disagree) still list
in the order they were inserted; ``id`` is the public, store-generated identifier.
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
)

__all__ = ["UTCDateTime", "messages", "metadata", "sessions", "writers"]


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
    Index("ix_sessions_created_at", "created_at"),
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
    # The writer (see ``writers``) that last wrote the row and has not been swept since; NULL
    # once a recovery sweep checked the row after that writer ended (revision 0002).
    Column("writer_id", String, nullable=True),
    Index("ix_messages_session_id_seq", "session_id", "seq"),
    Index("ix_messages_writer_id", "writer_id"),
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
