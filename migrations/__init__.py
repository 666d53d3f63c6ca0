"""Alembic migrations of Loupe's catalog (run with `loupe db upgrade`)."""
