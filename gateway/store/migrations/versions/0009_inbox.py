"""inbox: a campus that falls behind is taken from the broker in bulk (issue 11)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campus", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("lease_until", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_inbox_campus_id", "inbox", ["campus", "id"])
    op.create_index("ix_inbox_owner", "inbox", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_inbox_owner", table_name="inbox")
    op.drop_index("ix_inbox_campus_id", table_name="inbox")
    op.drop_table("inbox")
