"""The JSON API (described by /api/openapi.json)."""

from __future__ import annotations

import math
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Callable

from flask import Blueprint, current_app, jsonify, request, url_for

from indexer.job_report import IndexingJobReport
from indexer.query import DEFAULT_K, MAX_K, MAX_OFFSET, MAX_TEXT, TEXT_BLANKS, SearchQuery
from indexer.roots import relative_to_root

from .errors import ApiError
from .openapi import openapi_document
from .restoration.pipeline import RestorationReport
from .restoration.stages import COSTLY_STAGES
from .restoration.stages import MODES as RESTORE_MODES
from .routing import MAX_ID, parse_id
from .security import WRITE, demand, require_token
from .services import service
from .urls import Urls

bp = Blueprint("api", __name__, url_prefix="/api")

REGION_MODES = ("on", "off")
VERIFY_MODES = ("on", "off")
PATH_MODES = ("absolute", "relative")
MAX_VARIATIONS = 8


def _given(name: str) -> list:
    """Every value of parameter `name`: from the query string, the form and a JSON body, in that order."""
    values = request.args.getlist(name) + request.form.getlist(name)
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, dict) and name in body:
        values.append(body[name])
    return values


def _param(name: str, default=None, parse: Callable = lambda raw: raw):
    """A parameter, parsed by `parse`. When it is given more than once (in the query and the
    body, say), every value must parse, so nothing invalid is silently ignored; the first wins."""
    values = [parse(raw) for raw in _given(name)]
    return values[0] if values else default


def _int_param(name: str, default: int, low: int, high: int) -> int:
    def parse(raw) -> int:
        try:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise TypeError
            value = int(raw)
        except (TypeError, ValueError):
            raise ApiError(400, "bad_parameter", f"{name} must be an integer, not {raw!r}") from None
        if not low <= value <= high:
            raise ApiError(400, "bad_parameter", f"{name} must be between {low} and {high}, not {value}")
        return value

    return _param(name, default, parse)


def _float_param(name: str, default: float | None, low: float, high: float) -> float | None:
    def parse(raw) -> float:
        try:
            if isinstance(raw, bool):
                raise TypeError
            value = float(raw)
        except (TypeError, ValueError):
            raise ApiError(400, "bad_parameter", f"{name} must be a number, not {raw!r}") from None
        if not low <= value <= high:  # also refuses NaN
            raise ApiError(400, "bad_parameter", f"{name} must be between {low} and {high}, not {value}")
        return value

    return _param(name, default, parse)


def _choice_param(name: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    def parse(raw) -> str:
        value = str(raw).lower() if isinstance(raw, str) else raw
        if value not in choices:
            raise ApiError(400, "bad_parameter", f"{name} must be one of {', '.join(choices)}, not {raw!r}")
        return value

    return _param(name, default, parse)


def _page_params() -> SearchQuery:
    """The page asked for (k, offset, min_score), as a query the search views complete."""
    k = _int_param("k", DEFAULT_K, 1, MAX_K)
    offset = _int_param("offset", 0, 0, MAX_OFFSET)
    _relative_paths()  # checked before any work
    min_score = _float_param("min_score", None, -math.inf, math.inf)
    return SearchQuery(k=k, offset=offset, min_score=min_score, **_library_params())


# Every parameter the search endpoints read: `indexer.filters.check_names` refuses a filter-like
# name that is none of these (a typo would otherwise leave the search silently unfiltered).
SEARCH_PARAMS = ("q", "k", "offset", "min_score", "paths", "restore", "regions", "verify", "image_id", "image",
                 "sort", "cursor")
MAX_FOLDERS_PAGE = 500


def _values(name: str) -> list:
    """Every value of a repeatable parameter (a JSON body may give a list)."""
    values = []
    for value in _given(name):
        values.extend(value if isinstance(value, list) else [value])
    return values


def _param_names() -> set[str]:
    body = request.get_json(silent=True) if request.is_json else None
    return set(request.args) | set(request.form) | set(body if isinstance(body, dict) else ())


def _library_params() -> dict:
    """A search's filters, sort and cursor (`indexer.filters`), checked before any work; a bad
    one is a 400 `bad_parameter` naming it (a `QueryError`)."""
    from indexer.cursor import MAX_CURSOR
    from indexer.filters import FILTER_NAMES, check_names, parse_filter, parse_sort

    check_names(_param_names(), SEARCH_PARAMS + FILTER_NAMES)
    filters = parse_filter({name: _values(name) for name in FILTER_NAMES})

    def cursor(raw) -> str:
        if not isinstance(raw, str) or not 0 < len(raw) <= MAX_CURSOR:
            raise ApiError(400, "bad_parameter", "cursor must be the `next` of a previous page, as it was given")
        return raw

    return {"filters": filters, "sort": _param("sort", "relevance", parse_sort), "cursor": _param("cursor", None, cursor)}


@bp.get("/folders")
def folders():
    """The folders holding indexed pictures, by path, with their counts (for the folder
    picker): `q` keeps those whose path contains it (case-insensitive); `limit`, `offset` page."""
    text = (request.args.get("q") or "").strip().lower()
    if len(text) > MAX_TEXT:
        raise ApiError(400, "bad_parameter", f"q is longer than {MAX_TEXT} characters")
    limit = _int_param("limit", 100, 1, MAX_FOLDERS_PAGE)
    offset = _int_param("offset", 0, 0, MAX_OFFSET)
    found = [f for f in service().folders() if text in f[0].lower()]
    page = found[offset : offset + limit]
    return jsonify(folders=[{"path": path, "count": below, "direct": direct} for path, direct, below in page],
                   total=len(found), next=offset + limit if offset + limit < len(found) else None)


def _results(page, **extra) -> dict:
    body = Urls().page_json(page)
    if _relative_paths():
        _make_relative(body["results"])
    body.update(extra)
    return body


def _relative_paths() -> bool:
    """`paths=relative`: give each path relative to the folder it was indexed from (its job's
    root), not the server's absolute path; `absolute` (the default) keeps the contract's paths."""
    return _choice_param("paths", "absolute", PATH_MODES) == "relative"


def _make_relative(items: list[dict]) -> None:
    roots = service().indexed_roots([item["id"] for item in items])
    for item in items:
        item["path"] = relative_to_root(item["path"], roots.get(item["id"], []))
        if "folder" in item:  # an image's metadata: its folder is never absolute either
            item["folder"] = str(Path(item["path"]).parent)


@bp.get("/health")
def health():
    return jsonify(service().health())


@bp.get("/search")
def search_text():
    text = (request.args.get("q") or "").strip(TEXT_BLANKS)
    if not text:
        raise ApiError(400, "missing_query", "give the search text as ?q=...")
    if len(text) > MAX_TEXT:
        raise ApiError(400, "bad_parameter", f"the search text is longer than {MAX_TEXT} characters")
    query = _page_params()
    return jsonify(_results(service().search_text(text, query)))


@bp.post("/search/image")
def search_image():
    query = _page_params()
    restore = _choice_param("restore", "auto", RESTORE_MODES)
    if restore in COSTLY_STAGES:  # diffusion runs or large models: as costly as a write
        demand(WRITE)
    use_regions = _choice_param("regions", "on", REGION_MODES) == "on"
    verify = _choice_param("verify", None, VERIFY_MODES)
    verify = None if verify is None else verify == "on"
    query = replace(query, regions=use_regions, verify=service().verify_options(verify))
    upload = request.files.get("image")
    if upload is not None:
        data = upload.read()
        if not data:
            raise ApiError(400, "bad_image", "the uploaded image is empty")
        page, report = service().search_upload(data, query, restore=restore)
        restoration = report.as_dict()
    else:
        image_id = _param("image_id")
        if image_id is None:
            raise ApiError(400, "missing_image", "send a multipart 'image' file or JSON {\"image_id\": N}")
        page = service().search_image_id(parse_id(image_id), query)
        restoration = {**RestorationReport(restore).as_dict(), "note": "an indexed picture is searched by its stored vector"}
    return jsonify(_results(page, restoration=restoration))


@bp.post("/generate")
@require_token
def generate():
    """Start "generate similar" on an upload or an indexed image; answers with the finished
    job when it ends within `wait` seconds (at most GENERATE_MAX_WAIT: 5 s) (200), else with the
    running job (202). It writes pictures to disk, so it needs the API token when one is set."""
    from .generation.backends import Variations

    request_ = Variations(
        n=_int_param("n", 4, 1, MAX_VARIATIONS),
        strength=_float_param("strength", 0.6, 0.05, 1.0),
        seed=_int_param("seed", secrets.randbelow(2**31), 0, 2**31 - 1),
        steps=_int_param("steps", 50, 1, 200),
    )
    # Accepted up to 120 s as before, waited at most GENERATE_MAX_WAIT: a request thread is not
    # held for long (poll the Location instead).
    wait = min(_float_param("wait", 2.0, 0.0, 120.0), float(current_app.config["GENERATE_MAX_WAIT"]))
    upload = request.files.get("image")
    if upload is not None:
        data = upload.read()
        if not data:
            raise ApiError(400, "bad_image", "the uploaded image is empty")
        source_image, source = service().upload_source(data, current_app.config["GENERATE_SOURCE_SIDE"])
    else:
        image_id = _param("image_id")
        if image_id is None:
            raise ApiError(400, "missing_image", "send a multipart 'image' file or JSON {\"image_id\": N}")
        found = service().indexed_source(parse_id(image_id))
        if found is None:
            raise ApiError(404, "not_found", f"no readable image with id {image_id}")
        source_image, source = found
    if not service().generator_configured():
        from .generation.backends import GeneratorUnavailable

        raise GeneratorUnavailable(
            "no generator yet: run `loupe train-generator` (it trains on the indexed pictures), "
            "or set LOUPE_GENERATE_MODEL to a diffusers img2img pipeline"
        )
    jobs = service().generations
    job = jobs.submit(source_image, source, request_)
    jobs.wait(job.id, wait)
    body = jobs.get(job.id)
    response = jsonify(body)
    if body["state"] in ("queued", "running"):
        response.status_code = 202
        response.headers["Location"] = url_for("api.generation_status", job_id=job.id)
    return response


@bp.get("/jobs/<job_id>")
def generation_status(job_id: str):
    return _generation_json(service().generations.get(job_id), job_id)


@bp.post("/jobs/<job_id>/images/<int:number>/add")  # numbers start at 0; no database behind them
@require_token
def add_generated(job_id: str, number: int):
    """Index one generated picture, when a user asks (they are never indexed otherwise)."""
    path = service().generated_picture(job_id, f"{number}.png")
    if path is None:
        raise ApiError(404, "not_found", "no such generated picture (they expire)")
    return _created(service().add_upload(path.read_bytes(), f"{job_id}-{number}.png"))


@bp.post("/jobs/<job_id>/cancel")
@require_token
def cancel_job(job_id: str):
    """Cancel a generation (gen-...) or a bulk indexing job of this server (a number: it stops
    after its current batch; what it wrote stays)."""
    if job_id.isdigit():
        if not 1 <= int(job_id) <= MAX_ID:
            raise ApiError(404, "not_found", f"no job with id {job_id}")
        service().indexing_jobs.cancel(int(job_id))
        return jsonify(_indexing_job(int(job_id)).as_dict())
    return _generation_json(service().generations.cancel(job_id), job_id)


def _generation_json(body: dict | None, job_id: str):
    if body is None:
        raise ApiError(404, "not_found", f"no job {job_id!r} (generated pictures expire)")
    return jsonify(body)


@bp.get("/images/<id:image_id>")
def image_metadata(image_id: int):
    body = _image_json(image_id)
    if _relative_paths():
        _make_relative([body])
    return jsonify(body)


@bp.post("/images")
@require_token
def add_image():
    upload = request.files.get("image")
    if upload is None:
        raise ApiError(400, "missing_image", "send the picture as a multipart 'image' file")
    data = upload.read()
    if not data:
        raise ApiError(400, "bad_image", "the uploaded image is empty")
    return _created(service().add_upload(data, upload.filename or ""))


def _created(image_id: int):
    """201 with the indexed image and its Location."""
    response = jsonify(_image_json(image_id))
    response.status_code = 201
    response.headers["Location"] = url_for("api.image_metadata", image_id=image_id)
    return response


@bp.delete("/images/<id:image_id>")
@require_token
def delete_image(image_id: int):
    service().remove_image(image_id)
    return jsonify(removed=image_id)


@bp.post("/jobs")
@require_token
def start_job():
    body = request.get_json(silent=True)
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p and "\0" not in p for p in paths):
        raise ApiError(400, "bad_parameter", 'send JSON {"paths": ["/folder", ...]} with absolute server paths')
    if not all(Path(p).is_absolute() for p in paths):
        raise ApiError(400, "bad_parameter", "job paths must be absolute paths on the server")
    # Refused alike whether a path outside the allowed roots exists or not; the job indexes real paths.
    job_id = service().start_indexing(paths)
    response = jsonify(_indexing_job(job_id).as_dict())
    response.status_code = 202
    response.headers["Location"] = url_for("api.indexing_job_status", job_id=job_id)
    return response


@bp.get("/jobs/<id:job_id>")
def indexing_job_status(job_id: int):
    return jsonify(_indexing_job(job_id).as_dict())


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


def _indexing_job(job_id: int) -> IndexingJobReport:
    job = service().indexing_job(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job with id {job_id}")
    return job


def _image_json(image_id: int) -> dict:
    """An image's catalog facts and its URLs."""
    facts = service().image_facts(image_id)
    if facts is None:
        raise ApiError(404, "not_found", f"no image with id {image_id}")
    return {**facts, **Urls().image(image_id)}
