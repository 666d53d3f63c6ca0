"""Staging for `loupe reembed`: the target model and the vectors re-embedded with it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

Written from indexer.catalog and reviewed by hand. While a re-embed runs, the new vectors live
in these tables, beside the catalog's own (which keep serving searches with the old model);
the swap copies them into `images`/`image_regions` and empties these tables in one
transaction. Staged rows cascade with their image, so a picture removed meanwhile leaves
nothing behind; staged region ids are never reused (AUTOINCREMENT on SQLite).
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reembed_target",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(length=128), nullable=False),
        sa.Column("pretrained", sa.String(length=256), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=True),
        sa.Column("embed_dim", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reembed_target")),
    )
    op.create_table(
        "staged_vectors",
        sa.Column("image_id", BigId, nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("noise_level", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_staged_vectors_image_id_images"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_staged_vectors")),
    )
    op.create_table(
        "staged_regions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("image_id", BigId, nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("w", sa.Integer(), nullable=False),
        sa.Column("h", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_staged_regions_image_id_images"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staged_regions")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_staged_regions_image_id"), "staged_regions", ["image_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_staged_regions_image_id"), table_name="staged_regions")
    op.drop_table("staged_regions")
    op.drop_table("staged_vectors")
    op.drop_table("reembed_target")
