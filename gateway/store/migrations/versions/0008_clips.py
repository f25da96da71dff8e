"""alarm video clips: the interval a clip covers, its gaps, key-point retention (issue 13)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.add_column(sa.Column("clip_start", TS, nullable=True))
        batch.add_column(sa.Column("clip_end", TS, nullable=True))
        batch.add_column(sa.Column("gaps", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("key_point", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.drop_column("key_point")
        batch.drop_column("gaps")
        batch.drop_column("clip_end")
        batch.drop_column("clip_start")
