"""The web service's URLs for images and generated pictures, built from its routes (`url_for`);
the one place that adds them to the core's search results and catalog records."""

from __future__ import annotations

from typing import Callable

from flask import Flask, url_for

from indexer.library import SearchPage, SearchResult

IMAGE_THUMB = "files.image_thumb"
IMAGE_FILE = "files.image_file"
IMAGE_PREVIEW = "files.image_preview"
GENERATED_IMAGE = "files.generated_image"
RESULT_HEAD = ("id", "path", "score", "width", "height")  # a result's URLs come after these keys


class Urls:
    """URLs from a builder `build(endpoint, **values)`: Flask's `url_for` inside a request, or
    the app's URL map bound to no request (background threads, the command line)."""

    def __init__(self, build: Callable[..., str] = url_for):
        self._build = build

    @classmethod
    def of_app(cls, app: Flask) -> "Urls":
        """The app's URLs outside any request (for background threads): paths from its root
        (under `LOUPE_URL_PREFIX` when set)."""
        return cls(lambda endpoint, **values: app.url_map.bind(
            "localhost", script_name=app.config.get("LOUPE_URL_PREFIX") or "/").build(endpoint, values))

    @classmethod
    def offline(cls) -> "Urls":
        """The service's image URLs without a service (the command line's JSON): the file
        routes on a bare application."""
        from . import files
        from .routing import IdConverter

        app = Flask(__name__)
        app.url_map.converters["id"] = IdConverter
        app.register_blueprint(files.bp)
        return cls.of_app(app)

    def image(self, image_id: int) -> dict[str, str]:
        return {"thumb_url": self._build(IMAGE_THUMB, image_id=image_id),
                "file_url": self._build(IMAGE_FILE, image_id=image_id),
                "preview_url": self._build(IMAGE_PREVIEW, image_id=image_id)}

    def generated(self, job_id: str, name: str) -> str:
        return self._build(GENERATED_IMAGE, job_id=job_id, name=name)

    def result_json(self, result: SearchResult) -> dict:
        """A search result's JSON with its image URLs after its size."""
        body = result.as_dict()
        head = {key: body.pop(key) for key in RESULT_HEAD}
        return {**head, **self.image(result.id), **body}

    def page_json(self, page: SearchPage) -> dict:
        return page.as_dict(self.result_json)
