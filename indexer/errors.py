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


class PathNotAllowedError(LoupeError):
    """A job path outside the folders this server may index (LOUPE_ALLOWED_ROOTS)."""

    code = "path_not_allowed"


class JobNotRunningError(LoupeError):
    """A cancel request for a job that this process is not running."""

    code = "job_not_running"


class CancelledError(LoupeError):
    """A job stopped because it was asked to (between two batches)."""

    code = "cancelled"


class FileMissingError(LoupeError):
    """A catalogued file is no longer at its path."""

    code = "file_missing"


class FileChangedError(LoupeError):
    """A catalogued path now holds something other than the file that was indexed (another
    size or mtime, not a regular file, or a symlink leading out of the roots)."""

    code = "file_changed"


class DecodeBusyError(LoupeError):
    """Every decode slot of the process stayed taken for longer than the caller would wait."""

    code = "busy"
    retry_after = 5


class QuarantineConflictError(LoupeError):
    """A duplicates action that cannot be done as things are: a restore whose original path is
    taken again, a group that changed, a burst group asked to be quarantined."""

    code = "conflict"
