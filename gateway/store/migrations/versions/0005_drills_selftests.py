"""drills, self-tests and periodic test signals

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 03:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("campus", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("planned_start", TS, nullable=False),
        sa.Column("planned_end", TS, nullable=False),
        sa.Column("actual_start", TS, nullable=True),
        sa.Column("actual_end", TS, nullable=True),
        sa.Column("started_by", sa.String(length=64), nullable=False),
        sa.Column("ended_by", sa.String(length=64), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("alarms", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_drills_campus", "drills", ["campus"])
    op.create_index("ix_drills_state", "drills", ["state"])
    op.create_table(
        "selftests",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("campus", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=26), nullable=True),
        sa.Column("hops", sa.JSON(), nullable=False),
        sa.Column("failed_hop", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_selftests_campus", "selftests", ["campus"])
    op.create_table(
        "test_signals",
        sa.Column("campus", sa.String(length=64), nullable=False),
        sa.Column("last_at", TS, nullable=True),
        sa.Column("last_event", sa.String(length=26), nullable=True),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("missed", sa.Boolean(), nullable=False),
        sa.Column("missed_since", TS, nullable=True),
        sa.PrimaryKeyConstraint("campus"),
    )


def downgrade() -> None:
    op.drop_table("test_signals")
    op.drop_index("ix_selftests_campus", table_name="selftests")
    op.drop_table("selftests")
    op.drop_index("ix_drills_state", table_name="drills")
    op.drop_index("ix_drills_campus", table_name="drills")
    op.drop_table("drills")
