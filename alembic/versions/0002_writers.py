"""Writer leases, and which writer last wrote each message (crash recovery).

Existing messages get the writer id ``pre-0002``, a lease that expired long ago, so the first
recovery sweep after the upgrade checks each of them once (and finishes any left streaming),
then deletes that lease.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from messagestore._database._schema import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRE_0002_WRITER = "pre-0002"
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


def upgrade() -> None:
    op.create_table(
        "writers",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    writers = sa.table(
        "writers",
        sa.column("id", sa.String()),
        sa.column("pid", sa.Integer()),
        sa.column("host", sa.String()),
        sa.column("started_at", UTCDateTime()),
        sa.column("heartbeat_at", UTCDateTime()),
        sa.column("expires_at", UTCDateTime()),
    )
    op.bulk_insert(
        writers,
        [
            {
                "id": PRE_0002_WRITER,
                "pid": 0,
                "host": "",
                "started_at": _LONG_AGO,
                "heartbeat_at": _LONG_AGO,
                "expires_at": _LONG_AGO,
            }
        ],
    )
    op.add_column("messages", sa.Column("writer_id", sa.String(), nullable=True))
    op.execute(
        sa.text("UPDATE messages SET writer_id = :writer").bindparams(writer=PRE_0002_WRITER)
    )
    op.create_index("ix_messages_writer_id", "messages", ["writer_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_writer_id", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("writer_id")
    op.drop_table("writers")
