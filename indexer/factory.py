"""The library and the model a process works with, built from its settings.

The one place the command line, the web service and the benchmarks get them from. Both
load lazily: importing this module costs nothing (no torch, no database)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .embedder import ClipEmbedder
    from .library import Library
    from .settings import Settings


def open_library(settings: Settings) -> Library:
    """The catalog and its indexes under `settings` (the database is opened, not migrated)."""
    from .library import Library

    return Library.open(settings)


def load_embedder(settings: Settings, device: str | None = None) -> ClipEmbedder:
    """The configured model (`LOUPE_MODEL`/`LOUPE_PRETRAINED`) on `device` (default
    `LOUPE_DEVICE`), its weights loaded."""
    from .embedder import ModelSpec, create_embedder

    spec = ModelSpec(settings.model, settings.pretrained, device or settings.device)
    return create_embedder(spec, settings.models_dir)
