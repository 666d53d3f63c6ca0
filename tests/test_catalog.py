"""The catalog's migrations: they build exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from indexer.catalog import Base
from indexer.database import current_and_head, make_engine, open_database, upgrade
from indexer.errors import DatabaseError
from indexer.settings import Settings


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


def test_migrations_match_the_models(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    names = set(inspect(engine).get_table_names())
    assert {"images", "image_regions", "jobs", "index_info", "alembic_version"} <= names
    current, head = current_and_head(engine)
    assert current == head == "0006"
    engine.dispose()


def test_migrations_downgrade_and_upgrade_again(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    from alembic import command

    from indexer.database import alembic_config

    command.downgrade(alembic_config(engine), "base")
    assert "images" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert "images" in inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_default_is_migrated_automatically(tmp_path):
    settings = Settings.from_env({"LOUPE_HOME": str(tmp_path / "home")})
    sessions = open_database(settings)
    engine = sessions.kw["bind"]
    assert current_and_head(engine)[0] == "0006"
    engine.dispose()


def test_postgres_must_be_upgraded_explicitly(postgres_url, tmp_path):
    settings = Settings.from_env({"LOUPE_HOME": str(tmp_path), "LOUPE_DATABASE_URL": postgres_url})
    with pytest.raises(DatabaseError, match="loupe db upgrade"):
        open_database(settings)


def test_sqlite_never_reuses_deleted_ids(tmp_path):
    """Ids are FAISS ids: a deleted image's id must never name another picture."""
    from indexer.catalog import ImageRecord

    settings = Settings.from_env({"LOUPE_HOME": str(tmp_path / "home")})
    sessions = open_database(settings)
    with sessions.begin() as session:
        record = ImageRecord(path="/a.jpg", size_bytes=1, mtime_ns=1, status="failed")
        session.add(record)
        session.flush()
        first = record.id
    with sessions.begin() as session:
        session.delete(session.get(ImageRecord, first))
    with sessions.begin() as session:
        again = ImageRecord(path="/b.jpg", size_bytes=1, mtime_ns=1, status="failed")
        session.add(again)
        session.flush()
        assert again.id > first
    sessions.kw["bind"].dispose()


def test_upgrade_from_0001_keeps_indexed_images(database_url):
    """A catalog made before regions existed is upgraded in place: rows and vectors stay."""
    from alembic import command
    from sqlalchemy import text

    from indexer.database import alembic_config

    engine = make_engine(database_url)
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO images (path, size_bytes, mtime_ns, status, embedding, indexed_at) "
            "VALUES ('/old.jpg', 10, 1, 'indexed', :vec, CURRENT_TIMESTAMP)"
        ), {"vec": b"\x00" * 8})
        conn.execute(text(
            "INSERT INTO index_info (id, architecture, pretrained, embed_dim, created_at) "
            "VALUES (1, 'ViT-B-32', 'none', 2, CURRENT_TIMESTAMP)"
        ))
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT path, embedding FROM images")).one() == ("/old.jpg", b"\x00" * 8)
        assert conn.execute(text("SELECT whole_cutoff FROM index_info")).scalar() is None
        assert conn.execute(text("SELECT count(*) FROM image_regions")).scalar() == 0
        assert conn.execute(text("SELECT local_features FROM images")).scalar() is None  # backfilled by `loupe index`
    engine.dispose()
