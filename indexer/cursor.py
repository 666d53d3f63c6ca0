"""Opaque page cursors: where the next page of a search starts, bound to that search.

A cursor carries the position after the last result shown and a hash of what the ranking
depends on: the query vector (rounded, so the same text or picture gives the same cursor in
any process), the filters, the sort, min_score, regions, exclusions and verification, and the
index generation (`Library.generation`). While the index is unchanged, a search's ranking is
deterministic, so the next page neither repeats nor skips a result; a cursor presented with
another query, or after the index changed, is refused (`CursorError`, a 400 naming `cursor`).
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np

from .filters import QueryError

VERSION = 1
MAX_CURSOR = 200  # characters a cursor may have (they are about 60)


class CursorError(QueryError):
    def __init__(self, message: str):
        super().__init__("cursor", message)


def binding(vector: np.ndarray, fingerprint: str, generation: str) -> str:
    """The hash a cursor is bound to: the query `vector`, the query's `fingerprint`
    (`SearchQuery.fingerprint`) and the index `generation`."""
    rounded = np.round(np.asarray(vector, dtype=np.float64).reshape(-1) * 1000).astype(np.int32)
    digest = hashlib.sha256(rounded.tobytes())
    digest.update(fingerprint.encode())
    digest.update(generation.encode())
    return digest.hexdigest()[:24]


def encode(position: int, bound_to: str) -> str:
    body = json.dumps({"v": VERSION, "o": int(position), "b": bound_to}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(token: str, bound_to: str) -> int:
    """The position `token` holds, if it was made for the search bound to `bound_to`."""
    if not isinstance(token, str) or not token or len(token) > MAX_CURSOR:
        raise CursorError("cursor is not a cursor this server gave (pass back a response's `next` as it is)")
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, bound, version = body["o"], body["b"], body["v"]
    except (ValueError, TypeError, KeyError):
        raise CursorError("cursor is not a cursor this server gave (pass back a response's `next` as it is)") from None
    if version != VERSION or not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise CursorError("cursor is not a cursor this server gave (pass back a response's `next` as it is)")
    if bound != bound_to:
        raise CursorError("cursor belongs to another search, or the index changed since it was given: "
                          "start the search again without it")
    return position
