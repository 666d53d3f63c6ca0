"""The duplicates review: dismissed groups and quarantined pictures.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

Written from indexer.catalog and reviewed by hand. `duplicate_dismissals` remembers a dismissed
group by its members' content hashes; `quarantine` holds each picture moved under
`$LOUPE_HOME/quarantine` with its original path and its catalog row (vector, local features,
regions) for a restore that needs no model.
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "duplicate_dismissals",
        sa.Column("group_id", sa.String(length=32), nullable=False),
        sa.Column("hashes", sa.Text(), nullable=False),
        sa.Column("dismissed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group_id", name=op.f("pk_duplicate_dismissals")),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(length=32), nullable=True),
        sa.Column("image_id", sa.BigInteger(), nullable=False),
        sa.Column("kept_id", sa.BigInteger(), nullable=True),
        sa.Column("original_path", sa.Text(), nullable=False),
        sa.Column("stored_path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("local_features", sa.LargeBinary(), nullable=True),
        sa.Column("regions", sa.LargeBinary(), nullable=True),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_quarantine_group_id", "quarantine", ["group_id"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_group_id", table_name="quarantine")
    op.drop_table("quarantine")
    op.drop_table("duplicate_dismissals")
