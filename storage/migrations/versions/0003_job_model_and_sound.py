"""jobs remember the provider model that ran them and whether they asked for sound; room for
keyframes (an end image, loops, multi-shot)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: a batch copy of jobs would trip job_events' foreign key on SQLite.
    op.add_column("jobs", sa.Column("model", sa.String(), nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("audio", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("jobs", sa.Column("end_image_path", sa.String(), nullable=True))
    op.add_column("jobs", sa.Column("end_image_mime", sa.String(), nullable=True))
    op.add_column("jobs", sa.Column("loop", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("jobs", sa.Column("shots", sa.String(), nullable=False, server_default="single"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        for name in ("shots", "loop", "end_image_mime", "end_image_path", "audio", "model"):
            batch_op.drop_column(name)
