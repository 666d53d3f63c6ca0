"""Errors that say the server is at capacity for some work: the client may retry after a
while (the API answers them with `Retry-After`). Free of Flask, so model code can raise them."""

from __future__ import annotations

from indexer import errors as loupe_errors


class Overloaded(loupe_errors.LoupeError):
    """The server is at capacity for this kind of work; the client may retry after
    `retry_after` seconds (sent as `Retry-After`)."""

    code = "busy"

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class Busy(Overloaded):
    """503: the model thread's queue is full, or a request waited past its deadline."""


class QueueFull(Overloaded):
    """429: too many generation jobs are waiting."""

    code = "too_many_requests"
