"""Image bytes and thumbnails, served only for catalogued images: the file system is reached
through the catalog's path for an id, never through a path taken from the request, and only
while that path still holds the file that was indexed (`indexer.safeopen`)."""

from __future__ import annotations

from typing import BinaryIO

from flask import Blueprint, Response, request, send_file
from werkzeug.wsgi import wrap_file

from indexer.catalog import ImageStatus
from indexer.errors import FileChangedError, FileMissingError, ImageReadError
from indexer.images import DecodeLimits, read_open_file
from indexer.thumbnails import THUMB_SIZE

from .errors import ApiError
from .services import ServedFile, service

bp = Blueprint("files", __name__)

MIMETYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff", "HEIF": "image/heif",
}
# The download name's suffix comes from the decoded format, never from the stored name.
SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
            "TIFF": ".tif", "HEIF": ".heic"}
ONE_DAY = 24 * 3600
# Pictures are private: a shared cache (a proxy) must never keep them for another user.
FILE_CACHE = f"private, max-age={ONE_DAY}"
THUMB_CACHE = f"private, max-age={30 * ONE_DAY}, immutable"


def _catalogued(image_id: int) -> ServedFile:
    record = service().served_file(image_id)
    if record is None:
        raise ApiError(404, "not_found", f"no image with id {image_id}")
    if record.status == ImageStatus.FAILED or record.format not in MIMETYPES:
        raise ApiError(404, "not_found", f"image {image_id} could not be read when it was indexed")
    return record


def _open(record: ServedFile) -> BinaryIO:
    """The image's file, if it is still the one that was indexed; else 404 (the row is flagged)."""
    try:
        return service().open_file(record)
    except FileMissingError:
        raise ApiError(404, "file_missing", f"the file of image {record.id} is no longer where it was indexed") from None
    except FileChangedError:
        raise ApiError(404, "file_changed", f"the file of image {record.id} changed since it was indexed; "
                                            "index its folder again") from None


@bp.get("/images/<id:image_id>/file")
def image_file(image_id: int):
    record = _catalogued(image_id)
    fh = _open(record)
    response = Response(wrap_file(request.environ, fh), mimetype=MIMETYPES[record.format], direct_passthrough=True)
    response.content_length = record.size_bytes
    response.last_modified = record.mtime_ns / 1e9
    response.set_etag(f"{record.id}-{record.size_bytes}-{record.mtime_ns}")
    response.headers["Cache-Control"] = FILE_CACHE
    response.headers["Content-Disposition"] = f'inline; filename="{image_id}{SUFFIXES[record.format]}"'
    return response.make_conditional(request.environ, accept_ranges=True, complete_length=record.size_bytes)


@bp.get("/images/<id:image_id>/thumb")
def image_thumb(image_id: int):
    record = _catalogued(image_id)
    with _open(record) as fh:  # checked on every request: a changed original loses its thumbnail too
        def read() -> bytes:
            return read_open_file(fh, DecodeLimits()).data

        try:
            thumb = service().thumbnail(image_id, read)
        except ImageReadError as err:
            raise ApiError(404, "bad_image", f"cannot make a thumbnail of image {image_id}: {err}") from err
    # An id's content never changes (a changed file gets a new id), so thumbnails are immutable.
    response = send_file(thumb, mimetype="image/jpeg", conditional=True, max_age=30 * ONE_DAY)
    response.headers["Cache-Control"] = THUMB_CACHE
    response.headers["Content-Disposition"] = f'inline; filename="{image_id}-{THUMB_SIZE}.jpg"'
    return response


@bp.get("/generated/<job_id>/<name>")
def generated_image(job_id: str, name: str):
    """A generated picture (never indexed; expires with its job)."""
    path = service().generated_picture(job_id, name)
    if path is None:
        raise ApiError(404, "not_found", "no such generated picture (they expire)")
    response = send_file(path, mimetype="image/png", conditional=True, max_age=ONE_DAY)
    response.headers["Cache-Control"] = FILE_CACHE
    return response
