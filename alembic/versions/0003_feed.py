"""The change feed and incremental streaming: revisions, the counter, tombstones, appends.

Existing rows are numbered in creation order: messages get their ``seq`` as revision, sessions
the revisions after the last message, and the counter starts past both. Rows that a recovery
sweep may still need to look at (a writer is recorded and the message is an unfinished
assistant message or holds tool calls) are marked ``in_progress``; the sweep then reads only
those, through a partial index, instead of every row an ended writer ever wrote.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from messagestore._database._schema import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN with a default, never a table rebuild: on SQLite, rebuilding
    # ``sessions`` would DROP it, and with foreign keys on that cascades into ``messages``.
    bind = op.get_bind()
    for table in ("messages", "sessions"):
        for name in ("revision", "created_revision"):
            op.add_column(
                table, sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
            )
    op.add_column(
        "messages",
        sa.Column("in_progress", sa.Boolean(), nullable=False, server_default=sa.false()),
    )

    op.execute("UPDATE messages SET revision = seq, created_revision = seq")
    last = bind.execute(sa.text("SELECT COALESCE(MAX(seq), 0) FROM messages")).scalar_one()
    ids = bind.execute(sa.text("SELECT id FROM sessions ORDER BY created_at, id")).scalars().all()
    if ids:
        bind.execute(
            sa.text(
                "UPDATE sessions SET revision = :revision, created_revision = :revision "
                "WHERE id = :id"
            ),
            [{"revision": last + n, "id": sid} for n, sid in enumerate(ids, start=1)],
        )
    counter = last + len(ids)
    op.execute(
        sa.text(
            "UPDATE messages SET in_progress = :yes WHERE writer_id IS NOT NULL AND ("
            "(role = 'assistant' AND parts NOT LIKE '%\"finish\"%') "
            "OR parts LIKE '%\"tool!_call\"%' ESCAPE '!')"
        ).bindparams(yes=True)
    )

    op.drop_index("ix_messages_writer_id", table_name="messages")
    op.create_index("ix_messages_revision", "messages", ["revision"])
    op.create_index("ix_messages_session_id_revision", "messages", ["session_id", "revision"])
    op.create_index(
        "ix_messages_writer_in_progress",
        "messages",
        ["writer_id"],
        sqlite_where=sa.text("in_progress = 1"),
        postgresql_where=sa.text("in_progress"),
    )
    op.create_index("ix_sessions_revision", "sessions", ["revision"])

    feed_state = op.create_table(
        "feed_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("compacted_revision", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(feed_state, [{"id": 1, "revision": counter, "compacted_revision": 0}])
    op.create_table(
        "tombstones",
        sa.Column("revision", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("role", sa.String(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=True),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_tombstones_deleted_at", "tombstones", ["deleted_at"])
    op.create_table(
        "message_appends",
        sa.Column("last_revision", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("first_revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
    )
    op.create_table(
        "message_streams",
        sa.Column("message_id", sa.String(), primary_key=True),
        sa.Column("appends_from", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_tombstones_session_id_revision", "tombstones", ["session_id", "revision"])


def downgrade() -> None:
    # Fold streamed text back into the rows first: revision 0002 stores messages whole.
    _fold_all_streams()
    op.drop_table("message_streams")
    op.drop_table("message_appends")
    op.drop_table("tombstones")
    op.drop_table("feed_state")
    op.drop_index("ix_sessions_revision", table_name="sessions")
    op.drop_index("ix_messages_writer_in_progress", table_name="messages")
    op.drop_index("ix_messages_session_id_revision", table_name="messages")
    op.drop_index("ix_messages_revision", table_name="messages")
    op.create_index("ix_messages_writer_id", "messages", ["writer_id"])
    for table, names in (
        ("sessions", ("created_revision", "revision")),
        ("messages", ("in_progress", "created_revision", "revision")),
    ):
        for name in names:
            op.drop_column(table, name)


def _fold_all_streams() -> None:
    """Rewrite every streaming message whole (its base with its appends applied)."""
    from messagestore._codec import encode_parts
    from messagestore._database import _appends
    from messagestore._database._message_jobs import list_messages
    from messagestore._database._schema import message_streams, messages
    from messagestore._database._tx import Tx

    bind = op.get_bind()
    ids = bind.execute(sa.select(message_streams.c.message_id)).scalars().all()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for message in list_messages(Tx(bind), messages.c.id.in_(chunk)):
            bind.execute(
                sa.update(messages)
                .where(messages.c.id == message.id)
                .values(parts=encode_parts(message.parts), revision=message.revision)
            )
    _appends.close_streams(bind, list(ids))
