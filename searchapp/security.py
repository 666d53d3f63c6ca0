"""Bearer-token protection of write endpoints, and safe response headers."""

from __future__ import annotations

import functools
import hmac

from flask import Flask, current_app, request

from .errors import ApiError

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def require_token(view):
    """Refuse the request unless it carries `Authorization: Bearer <LOUPE_API_TOKEN>`
    (when a token is configured). Compared in constant time."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        token = current_app.extensions["loupe"].settings.api_token
        if token:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not given:
                raise ApiError(401, "unauthorized", "this endpoint needs an 'Authorization: Bearer <token>' header")
            if not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise ApiError(403, "forbidden", "the bearer token is not valid")
        return view(*args, **kwargs)

    return wrapped


def init_app(app: Flask) -> None:
    @app.after_request
    def headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response
