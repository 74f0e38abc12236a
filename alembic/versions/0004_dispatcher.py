"""The dispatcher: inbound input, turns, per-session claims and routes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from messagestore._database._schema import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _session_fk(table: str, **kwargs: object) -> sa.Column[str]:
    return sa.Column(
        "session_id",
        sa.String(),
        sa.ForeignKey("sessions.id", ondelete="CASCADE", name=f"fk_{table}_session_id"),
        **kwargs,  # type: ignore[arg-type]
    )


def upgrade() -> None:
    op.create_table(
        "dispatch_sessions",
        _session_fk("dispatch_sessions", primary_key=True),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("stale_seq", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index("ix_dispatch_sessions_owner", "dispatch_sessions", ["owner"])
    op.create_table(
        "dispatch_inputs",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(), nullable=False, unique=True),
        _session_fk("dispatch_inputs", nullable=False),
        sa.Column("key", sa.String(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("turn_id", sa.String(), nullable=True),
        sa.Column("summarized", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("note_turn_id", sa.String(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
    )
    op.create_index(
        "ux_dispatch_inputs_session_key", "dispatch_inputs", ["session_id", "key"], unique=True
    )
    op.create_index(
        "ix_dispatch_inputs_state_session", "dispatch_inputs", ["state", "session_id", "seq"]
    )
    op.create_index(
        "ix_dispatch_inputs_session_state", "dispatch_inputs", ["session_id", "state", "seq"]
    )
    op.create_index("ix_dispatch_inputs_turn_id", "dispatch_inputs", ["turn_id"])
    op.create_table(
        "dispatch_turns",
        sa.Column("id", sa.String(), primary_key=True),
        _session_fk("dispatch_turns", nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("user_message_id", sa.String(), nullable=True),
        sa.Column("inputs", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_dispatch_turns_state", "dispatch_turns", ["state", "session_id"])
    op.create_index("ix_dispatch_turns_session_id", "dispatch_turns", ["session_id", "started_at"])
    op.create_table(
        "dispatch_routes",
        sa.Column("key", sa.String(), primary_key=True),
        _session_fk("dispatch_routes", nullable=False),
        sa.Column("delivery", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_dispatch_routes_session_id", "dispatch_routes", ["session_id", "updated_at"]
    )


def downgrade() -> None:
    op.drop_table("dispatch_routes")
    op.drop_table("dispatch_turns")
    op.drop_table("dispatch_inputs")
    op.drop_table("dispatch_sessions")
