"""Image bytes and thumbnails, served only for catalogued images: the file system is reached
through the catalog's path for an id, never through a path taken from the request."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_file

from indexer.catalog import ImageStatus
from indexer.errors import ImageReadError
from indexer.thumbnails import ensure_thumbnail

from .errors import ApiError
from .services import service

bp = Blueprint("files", __name__)

MIMETYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff",
}
ONE_DAY = 24 * 3600


def _catalogued(image_id: int):
    record = service().library.image(image_id)
    if record is None:
        raise ApiError(404, "not_found", f"no image with id {image_id}")
    if record.status == ImageStatus.FAILED or record.format not in MIMETYPES:
        raise ApiError(404, "not_found", f"image {image_id} could not be read when it was indexed")
    path = Path(record.path)
    if not path.is_file():
        raise ApiError(404, "file_missing", f"the file of image {image_id} is no longer at {record.path}")
    return record, path


@bp.get("/images/<int:image_id>/file")
def image_file(image_id: int):
    record, path = _catalogued(image_id)
    response = send_file(path, mimetype=MIMETYPES[record.format], conditional=True, max_age=ONE_DAY)
    response.headers["Content-Disposition"] = f'inline; filename="{image_id}{path.suffix.lower()}"'
    return response


@bp.get("/images/<int:image_id>/thumb")
def image_thumb(image_id: int):
    _, path = _catalogued(image_id)
    try:
        thumb = ensure_thumbnail(service().settings.home, image_id, path)
    except ImageReadError as err:
        raise ApiError(404, "bad_image", f"cannot make a thumbnail of image {image_id}: {err}") from err
    # An id's content never changes (a changed file gets a new id), so thumbnails are immutable.
    response = send_file(thumb, mimetype="image/jpeg", conditional=True, max_age=30 * ONE_DAY)
    response.headers["Cache-Control"] = f"public, max-age={30 * ONE_DAY}, immutable"
    return response


@bp.get("/generated/<job_id>/<name>")
def generated_image(job_id: str, name: str):
    """A generated picture (never indexed; expires with its job)."""
    path = service().generations.store.image_path(job_id, name)
    if path is None:
        raise ApiError(404, "not_found", "no such generated picture (they expire)")
    return send_file(path, mimetype="image/png", conditional=True, max_age=ONE_DAY)
