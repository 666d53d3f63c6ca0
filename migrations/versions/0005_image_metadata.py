"""What the library filters and sorts by: folder, date taken, camera, orientation, GPS.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Written from indexer.catalog and reviewed by hand. Every column is nullable: rows indexed before
this revision have `metadata_version` null, and the next `loupe index` reads their metadata from
the files without re-embedding them. `folder` and `taken_at` are indexed for filters and sorting.
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    ("folder", sa.Text()),
    ("taken_at", sa.DateTime(timezone=True)),
    ("taken_source", sa.String(length=8)),
    ("taken_offset_min", sa.SmallInteger()),
    ("camera_make", sa.String(length=64)),
    ("camera_model", sa.String(length=64)),
    ("orientation", sa.SmallInteger()),
    ("has_gps", sa.Boolean()),
    ("gps_lat", sa.Float()),
    ("gps_lon", sa.Float()),
    ("metadata_version", sa.SmallInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.create_index("ix_images_folder", ["folder"])
        batch.create_index("ix_images_taken_at", ["taken_at"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_taken_at")
        batch.drop_index("ix_images_folder")
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
