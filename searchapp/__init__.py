"""Loupe's web service: the JSON API and the HTML pages, built by `create_app`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flask import Flask

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The Flask application. Settings come from the environment unless `test_config` gives
    `LOUPE_SETTINGS` (an `indexer.settings.Settings`); nothing heavy loads until a request
    needs it."""
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=DEFAULT_MAX_UPLOAD_BYTES,
        MAX_UPLOAD_PIXELS=50_000_000,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)

    from . import api, errors, files, pages, security, services

    services.init_app(app)
    errors.init_app(app)
    security.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(pages.bp)
    return app
