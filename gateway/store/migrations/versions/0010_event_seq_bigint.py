"""events.seq as a 64-bit integer (issue 11: fuzzing on PostgreSQL)

An edge's sequence number is unbounded in the contract; a value past 2**31 - 1 (a hostile or
broken edge, or years of a chatty one) failed PostgreSQL's INTEGER column at every delivery, and
the unacknowledged message held the gateway's stream. SQLite's INTEGER was 64-bit already; the
batch rewrite gives it the same declared type.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column(
            "seq", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column(
            "seq", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False
        )
