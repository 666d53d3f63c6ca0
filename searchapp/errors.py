"""JSON errors for the API: `{"error": code, "message": text}` with a 4xx/5xx status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from indexer import errors as loupe_errors

from .capacity import Busy, QueueFull
from .generation.backends import GeneratorUnavailable
from .restoration.pixel import StageUnavailable

log = logging.getLogger(__name__)

STATUS_OF = {
    Busy: 503,
    loupe_errors.DecodeBusyError: 503,
    QueueFull: 429,
    loupe_errors.ImageReadError: 400,
    loupe_errors.ConfigError: 400,
    loupe_errors.PathNotAllowedError: 403,
    loupe_errors.JobNotRunningError: 409,
    loupe_errors.NotIndexedError: 404,
    loupe_errors.FileMissingError: 404,
    loupe_errors.FileChangedError: 404,
    loupe_errors.ModelMismatchError: 409,
    loupe_errors.JobLockedError: 409,
    loupe_errors.QuarantineConflictError: 409,
    loupe_errors.WeightsUnavailableError: 503,
    loupe_errors.DatabaseError: 503,
    GeneratorUnavailable: 503,
    StageUnavailable: 503,
}


class ApiError(Exception):
    """An error raised by a view: a code, a message and an HTTP status (and any headers,
    such as `Retry-After`)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _wants_json() -> bool:
    return (request.path.startswith(("/api/", "/images/"))
            or request.accept_mimetypes.best == "application/json")


def _methods_matching(app: Flask, methods) -> list[str]:
    """Which of `methods` really have a route for this request's path. Werkzeug answers 405 when
    another method's rule matches the path's shape even if a converter (an id out of range)
    then refuses it; such a path matches nothing."""
    adapter = app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in sorted(methods):
        try:
            adapter.match(method=method)
        except RequestRedirect:
            allowed.append(method)
        except HTTPException:
            continue
        else:
            allowed.append(method)
    return allowed


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return error_response(err.status, err.code, err.message, err.headers)

    @app.errorhandler(loupe_errors.LoupeError)
    def loupe_error(err: loupe_errors.LoupeError):
        status = next((s for cls, s in STATUS_OF.items() if isinstance(err, cls)), 400)
        retry_after = getattr(err, "retry_after", None)  # Overloaded, DecodeBusyError
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return error_response(status, err.code, str(err), headers)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        headers = None
        if isinstance(err, MethodNotAllowed):
            allowed = _methods_matching(app, err.valid_methods or ())
            if not allowed:  # the path matches no route once its ids are checked: not a method problem
                err = NotFound()
            else:
                headers = {"Allow": ", ".join(allowed)}  # RFC 9110: a 405 lists what is allowed
                if not _wants_json():
                    err.valid_methods = allowed
        if not _wants_json():
            return err
        code = (err.name or "error").lower().replace(" ", "_")
        messages = {
            413: f"the upload is larger than {app.config['MAX_CONTENT_LENGTH'] // (1024 * 1024)} MB",
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }
        return error_response(err.code or 500, code, messages.get(err.code, err.description or err.name), headers)

    @app.errorhandler(OverflowError)
    @app.errorhandler(DataError)
    def out_of_range(err: Exception):
        # A number the database cannot hold (ids are bounded before they get there: the net).
        log.warning("value out of range on %s %s: %s", request.method, request.path, err)
        return error_response(400, "bad_parameter", "a number in the request is out of the range the catalog holds")

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the server failed to answer this request; see its log")
