"""Identifiers in URLs and bodies: positive integers the catalog can store (SQLite's and
PostgreSQL's BIGINT), so an id out of range is a 404 or a 400, never a database error."""

from __future__ import annotations

from werkzeug.routing import IntegerConverter

from .errors import ApiError

MAX_ID = 2**63 - 1  # the largest BIGINT (and SQLite INTEGER)


class IdConverter(IntegerConverter):
    """`<id:name>` in a route: 1 … MAX_ID; anything else matches no route (404)."""

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=MAX_ID)


def parse_id(raw, name: str = "image_id") -> int:
    """An id from a form or JSON body, or a 400 that says what is wrong with it."""
    if isinstance(raw, bool):
        raise ApiError(400, "bad_parameter", f"{name} must be an integer, not {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "bad_parameter", f"{name} must be an integer, not {raw!r}") from None
    if not 1 <= value <= MAX_ID:
        raise ApiError(400, "bad_parameter", f"{name} must be between 1 and {MAX_ID}")
    return value
