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
from .security import WRITE, can_read, demand, require_token
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
    query = SearchQuery(k=k, offset=offset, min_score=min_score, rerank=_rerank_param(), **_library_params())
    return _in_cluster(query)


def _in_cluster(query: SearchQuery) -> SearchQuery:
    """`cluster` = a map cluster's id: search inside it (a filter, as a folder is)."""
    from indexer.collection_map import MAX_CLUSTERS

    cluster = _int_param("cluster", None, 0, MAX_CLUSTERS - 1)
    if cluster is None:
        return query
    try:
        service().library.cluster_members(cluster)
    except KeyError:
        raise ApiError(404, "not_found", f"no map cluster {cluster} (see GET /api/map)") from None
    return replace(query, filters=replace(query.filters, cluster=cluster))


def _rerank_param() -> str:
    """`rerank` = off (default) or diffusion (re-rank over the collection's graph)."""
    from indexer.diffusion_rank import RERANK_MODES

    return _choice_param("rerank", "off", RERANK_MODES)


# Every parameter the search endpoints read: `indexer.filters.check_names` refuses a filter-like
# name that is none of these (a typo would otherwise leave the search silently unfiltered).
SEARCH_PARAMS = ("q", "k", "offset", "min_score", "paths", "restore", "regions", "verify", "image_id", "image",
                 "sort", "cursor", "rerank", "cluster")
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
    """Liveness and readiness: 200 when every check is ok, 503 (same body) when degraded, so a
    proxy or monitor needs only the status code."""
    body = service().health(detailed=can_read())  # paths and errors only for callers who may read
    return jsonify(body), 200 if body["status"] == "ok" else 503


@bp.get("/search")
def search_text():
    text = (request.args.get("q") or "").strip(TEXT_BLANKS)
    if not text:
        raise ApiError(400, "missing_query", "give the search text as ?q=...")
    if len(text) > MAX_TEXT:
        raise ApiError(400, "bad_parameter", f"the search text is longer than {MAX_TEXT} characters")
    query = _page_params()
    terms = _parsed_q(text, image=False)
    if not terms.plain:  # weights, negatives or several terms: the combined query's vector
        return jsonify(_results(_terms_page(terms, query), combined=terms.as_dict()))
    return jsonify(_results(service().search_text(text, query)))


@bp.post("/search/image")
def search_image():
    query = _page_params()
    if _given("q"):  # words with the picture: a combined query, not a copy check
        return _search_image_with_words(query)
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


def _parsed_q(text: str, image: bool):
    """The terms of search text `text` (`indexer.combine`); bad syntax is a 400 naming q."""
    from indexer.combine import QuerySyntaxError, parse_terms

    try:
        return parse_terms(text, image=image)
    except QuerySyntaxError as err:
        raise ApiError(400, "bad_parameter", f"q: {err}") from None


def _terms_page(terms, query: SearchQuery, image: bytes | int | None = None):
    """The service's page for combined query `terms`; terms that cancel out are a 400 naming q."""
    from indexer.combine import QuerySyntaxError

    try:
        return service().search_terms(terms, query, image=image)
    except QuerySyntaxError as err:
        raise ApiError(400, "bad_parameter", f"q: {err}") from None


def _search_image_with_words(query: SearchQuery):
    """POST /api/search/image with `q`: the picture (upload or image_id) and the words as one
    combined query. It looks for similar pictures, not copies: no restoration, no verification,
    whole pictures, every result `similar`; asking for a restoration stage or for verification
    with it is a 400."""
    from indexer.combine import COMBINED_NOTE

    def text(raw) -> str:
        if not isinstance(raw, str):
            raise ApiError(400, "bad_parameter", f"q must be a string, not {raw!r}")
        if not raw.strip(TEXT_BLANKS):
            raise ApiError(400, "bad_parameter", "q is empty: give words to combine with the picture, or leave q out")
        if len(raw) > MAX_TEXT:
            raise ApiError(400, "bad_parameter", f"q is longer than {MAX_TEXT} characters")
        return raw

    terms = _parsed_q(_param("q", parse=text), image=True)
    restore = _choice_param("restore", "auto", RESTORE_MODES)
    if restore not in ("auto", "off"):
        raise ApiError(400, "bad_parameter", f"restore={restore} cannot be combined with q: a combined query is "
                                             "not restored (leave restore out, or send auto or off)")
    if _choice_param("verify", None, VERIFY_MODES) == "on":
        raise ApiError(400, "bad_parameter", "verify=on cannot be combined with q: a combined query looks for "
                                             "similar pictures, not copies (leave verify out, or send off)")
    _choice_param("regions", "on", REGION_MODES)  # checked; a combined query matches whole pictures
    upload = request.files.get("image")
    if upload is not None:
        data = upload.read()
        if not data:
            raise ApiError(400, "bad_image", "the uploaded image is empty")
        image = data
    else:
        image_id = _param("image_id")
        if image_id is None:
            raise ApiError(400, "missing_image", "send a multipart 'image' file or JSON {\"image_id\": N}")
        image = parse_id(image_id)
    page = _terms_page(terms, query, image)
    restoration = {**RestorationReport(restore).as_dict(), "note": COMBINED_NOTE}
    return jsonify(_results(page, restoration=restoration, combined=terms.as_dict(image=True)))


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


@bp.get("/map")
def collection_map():
    """The map of the collection: points (x, y in [0, 1], cluster) and clusters (GET /api/map)."""
    from indexer.collection_map import DEFAULT_MAP_POINTS, MAX_CLUSTERS, MAX_MAP_POINTS

    cluster = _int_param("cluster", None, 0, MAX_CLUSTERS - 1)
    limit = _int_param("limit", DEFAULT_MAP_POINTS, 1, MAX_MAP_POINTS)
    try:
        return jsonify(service().collection_map(cluster, limit))
    except KeyError:
        raise ApiError(404, "not_found", f"no map cluster {cluster}") from None


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
    return {**facts, **Urls().image(image_id, facts.get("content_hash"))}


# -- the duplicates review ------------------------------------------------------------------------
DUPLICATE_KINDS = ("duplicate", "burst")
DUPLICATES_DEFAULT_LIMIT, DUPLICATES_MAX_LIMIT = 20, 100
DUPLICATES_MAX_OFFSET = 10**7 - 1  # cursors carry at most 7 digits
GROUP_ID_CHARS = frozenset("0123456789abcdef")


def _duplicates_cursor(raw) -> int:
    """The offset a `cursor` (a page's `next`: `o` and a number; empty: the first page) stands for."""
    text = str(raw)
    if text == "":
        return 0
    if not (2 <= len(text) <= 8 and text[0] == "o" and text[1:].isdigit() and text[1:].isascii()):
        raise ApiError(400, "bad_parameter", "cursor is not one this server gave (pass back a page's next)")
    return int(text[1:])


def _duplicates_next(offset: int | None) -> str | None:
    return None if offset is None or offset > DUPLICATES_MAX_OFFSET else f"o{offset}"


def _group_id(group_id: str) -> str:
    if len(group_id) != 16 or not set(group_id) <= GROUP_ID_CHARS:
        raise ApiError(404, "not_found", f"no duplicates group {group_id!r}")
    return group_id


@bp.get("/duplicates")
def duplicates():
    """Groups of duplicate pictures and bursts, a page at a time (`next` → `cursor`)."""
    kind = _choice_param("kind", None, DUPLICATE_KINDS)
    limit = _int_param("limit", DUPLICATES_DEFAULT_LIMIT, 1, DUPLICATES_MAX_LIMIT)
    offset = _param("cursor", 0, _duplicates_cursor)
    dismissed = _choice_param("dismissed", "off", ("on", "off")) == "on"
    relative = _relative_paths()
    page = service().duplicate_groups(kind, offset, limit, dismissed)
    urls = Urls()
    groups = []
    for group in page.groups:
        body = group.as_dict()
        body["images"] = [{**image, **urls.image(image["id"])} for image in body["images"]]
        if relative:
            _make_relative(body["images"])
        groups.append(body)
    return jsonify(groups=groups, next=_duplicates_next(page.next_offset), total=page.total)


@bp.post("/duplicates/<group_id>/quarantine")
@require_token
def quarantine_group(group_id: str):
    """Move every picture of the group but the one kept (the suggestion, or `keep`) to the quarantine."""
    group_id = _group_id(group_id)
    if request.is_json and request.get_data() and not isinstance(request.get_json(silent=True), dict):
        raise ApiError(400, "bad_parameter", 'send JSON {"keep": ID} or no body')
    keep = _param("keep", None, lambda raw: parse_id(raw, "keep"))
    return jsonify(service().duplicates_action("quarantine", group_id, keep=keep))


@bp.post("/duplicates/<group_id>/restore")
@require_token
def restore_group(group_id: str):
    """Put back every quarantined picture of the group."""
    return jsonify(service().duplicates_action("restore", _group_id(group_id)))


@bp.post("/duplicates/<group_id>/dismiss")
@require_token
def dismiss_group(group_id: str):
    return jsonify(service().duplicates_action("dismiss", _group_id(group_id)))


@bp.post("/duplicates/<group_id>/undismiss")
@require_token
def undismiss_group(group_id: str):
    return jsonify(service().duplicates_action("undismiss", _group_id(group_id)))


@bp.get("/quarantine")
def quarantine_list():
    return jsonify(entries=service().quarantined())


@bp.post("/quarantine/<id:entry_id>/restore")
@require_token
def restore_entry(entry_id: int):
    return jsonify(service().duplicates_action("restore", entry_id=entry_id))
