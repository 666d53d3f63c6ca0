"""Database engines, sessions and Alembic migrations for the catalog."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .errors import DatabaseError
from .settings import Settings, ensure_home, redact_url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and foreign keys."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError, SQLAlchemyError) as err:
        raise DatabaseError(f"bad database URL {redact_url(url)}: {err}") from err
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrations_dir() -> Path:
    """The Alembic scripts: `migrations/` beside the packages (checkout or installed)."""
    spec = importlib.util.find_spec("migrations")
    if spec and spec.origin:
        return Path(spec.origin).parent
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(engine: Engine):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    from alembic import command

    try:
        command.upgrade(alembic_config(engine), revision)
    except OperationalError as err:
        raise unreachable(engine.url.render_as_string(), err) from err


def current_and_head(engine: Engine) -> tuple[str | None, str]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


def open_database(settings: Settings) -> sessionmaker[Session]:
    """A session factory on an up-to-date catalog.

    The embedded SQLite default is migrated automatically; any other database must have
    been upgraded with `loupe db upgrade` (so that schema changes on a shared server are
    deliberate).
    """
    ensure_home(settings.home)  # the index files live there whatever the database
    engine = make_engine(settings.database_url)
    try:
        current, head = current_and_head(engine)
        if current != head:
            if settings.is_sqlite:
                upgrade(engine)
            else:
                raise DatabaseError(
                    f"the database {redact_url(settings.database_url)} is at schema "
                    f"{current or 'empty'}, not {head}: run `loupe db upgrade`"
                )
    except OperationalError as err:
        engine.dispose()
        raise unreachable(settings.database_url, err) from err
    return sessionmaker(engine, expire_on_commit=False)


def unreachable(url: str, err: Exception) -> DatabaseError:
    reason = str(getattr(err, "orig", err)).strip().splitlines()[0]
    return DatabaseError(f"cannot use the database {redact_url(url)}: {reason}")

