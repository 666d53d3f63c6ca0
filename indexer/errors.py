"""Errors that carry a one-line, human message. The CLI prints it and exits non-zero."""


class LoupeError(Exception):
    """A failure the user can act on; `str(err)` is a one-line message."""

    code = "loupe_error"


class ConfigError(LoupeError):
    code = "bad_config"


class DatabaseError(LoupeError):
    code = "database_error"


class WeightsUnavailableError(LoupeError):
    code = "weights_unavailable"


class ModelMismatchError(LoupeError):
    code = "model_mismatch"


class ImageReadError(LoupeError):
    """An image file that cannot be read or decoded (recorded per file by bulk jobs)."""

    code = "bad_image"


class JobLockedError(LoupeError):
    code = "job_locked"


class NotIndexedError(LoupeError):
    code = "not_indexed"
