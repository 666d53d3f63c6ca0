"""Alembic environment: the database comes from Loupe's settings, never from Flask.

`loupe db upgrade` passes its engine in `config.attributes["engine"]`; plain `alembic`
runs (e.g. `alembic -c migrations/alembic.ini revision --autogenerate`) read
`LOUPE_DATABASE_URL`/`LOUPE_HOME` through `Settings.from_env()`.
"""

from alembic import context

from indexer.catalog import Base
from indexer.database import make_engine
from indexer.settings import Settings

target_metadata = Base.metadata


def _engine():
    engine = context.config.attributes.get("engine")
    return engine if engine is not None else make_engine(Settings.from_env().database_url)


def run_migrations_offline() -> None:
    context.configure(
        url=Settings.from_env().database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
