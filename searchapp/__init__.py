"""Loupe's web service: the JSON API and the HTML pages, built by `create_app`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flask import Flask, Request
from werkzeug.exceptions import BadRequest

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class LoupeRequest(Request):
    """A request whose JSON body, however deeply nested, never costs more than a 400."""

    def get_json(self, force=False, silent=False, cache=True):
        try:
            return super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            if silent:
                return None
            raise BadRequest("the JSON body is nested too deeply") from None


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The Flask application. Settings come from the environment unless `test_config` gives
    `LOUPE_SETTINGS` (a `searchapp.settings.ServiceSettings`); `LOUPE_SERVE_HOST` (the interface
    `loupe serve` binds; unset means loopback) decides what the access rules demand. Nothing
    heavy loads until a request needs it."""
    from .settings import ServiceSettings

    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.request_class = LoupeRequest
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=DEFAULT_MAX_UPLOAD_BYTES,
        MAX_UPLOAD_PIXELS=50_000_000,
        MAX_UPLOAD_DECODE_BYTES=None,  # memory one upload's decode may take; None: 8 bytes a pixel at the cap
        MAX_CONCURRENT_DECODES=4,  # decodes at once in this process (uploads, thumbnails, jobs)
        JSON_SORT_KEYS=False,
        LOUPE_SERVE_HOST=None,
        MODEL_QUEUE_LIMIT=32,  # model calls waiting or running at once; beyond: 503 busy
        MODEL_DEADLINE_SECONDS=30.0,  # a request's model call not started by then: 503 busy
        GENERATE_QUEUE_LIMIT=4,  # generation jobs queued or running; beyond: 429
        GENERATE_MAX_WAIT=5.0,  # the most a POST /api/generate waits for its job before answering 202
        GENERATE_SOURCE_SIDE=768,  # sources are shrunk to fit this square before they are queued
    )
    if test_config:
        app.config.update(test_config)
    if app.config.get("LOUPE_SETTINGS") is None:
        app.config["LOUPE_SETTINGS"] = ServiceSettings.from_env()

    from . import api, errors, files, pages, security, services
    from .routing import IdConverter
    from .urls import Urls

    app.url_map.converters["id"] = IdConverter

    rules = security.AccessPolicy.create(app.config["LOUPE_SETTINGS"], app.config["LOUPE_SERVE_HOST"])
    services.init_app(app, Urls.of_app(app))
    _observe(app)  # before the access rules, so a refused request is timed and logged too
    errors.init_app(app)
    security.init_app(app, rules)
    app.register_blueprint(api.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(pages.bp)
    _serve_under_prefix(app, getattr(app.config["LOUPE_SETTINGS"], "url_prefix", None))
    return app


def _serve_under_prefix(app: Flask, prefix: str | None) -> None:
    """Under `LOUPE_URL_PREFIX`: requests under the prefix have it as their script root, and
    URLs built outside a request (a generation's pictures) start with it too."""
    if not prefix:
        return
    from .prefix import PrefixMiddleware

    app.config["LOUPE_URL_PREFIX"] = prefix
    app.wsgi_app = PrefixMiddleware(app.wsgi_app, prefix)


def _observe(app: Flask) -> None:
    """The access log and the Prometheus metrics (`/metrics`) of `app`."""
    from . import access_log, metrics
    from .services import EXTENSION

    access_log.init_app(app)
    metrics.init_app(app, app.extensions[EXTENSION])
