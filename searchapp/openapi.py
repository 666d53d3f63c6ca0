"""The OpenAPI 3.1 description of the JSON API (checked against real responses in tests)."""

from __future__ import annotations

from functools import lru_cache

from indexer.cursor import MAX_CURSOR
from indexer.filters import MAX_DIMENSION, MAX_FILTER_TEXT, MAX_FILTER_VALUES, SORT_POOL, SORTS
from indexer.query import DEFAULT_K, MAX_K, MAX_OFFSET, MAX_TEXT, TEXT_BLANKS

from .restoration.stages import CONDITIONS, COSTLY_STAGES, MODES, STAGES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(code): _json(_ref("Error"), "error") for code in codes}


BLANKS_PATTERN = "".join(f"\\x{ord(c):02x}" for c in TEXT_BLANKS)  # as a regex class's members

RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
RETRY_LATER = {**_json(_ref("Error"), "too many generations waiting (`too_many_requests`)"), "headers": RETRY_AFTER}
BUSY = {**_json(_ref("Error"), "`busy`: the model's queue is full or this request waited past its deadline; "
                               "`database_unavailable`, `weights_unavailable`"), "headers": RETRY_AFTER}
IMAGE_SEARCH_UNAVAILABLE = {**_json(_ref("Error"), "`busy` (see Retry-After), `database_unavailable`, "
                                                   "`weights_unavailable`, or `restore_unavailable`: the restoration "
                                                   "stage asked for has no model here"), "headers": RETRY_AFTER}
GENERATE_UNAVAILABLE = _json(_ref("Error"), "`generator_unavailable`: no generator is trained or configured; "
                                            "`busy`, `database_unavailable`, `weights_unavailable`")


PATHS_PARAM = {"name": "paths", "in": "query", "schema": {"enum": ["absolute", "relative"], "default": "absolute"},
               "description": "relative: each path relative to the folder it was indexed from, not the server's "
                              "absolute path"}
PAGE_PARAMS = [
    {"name": "k", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
    {"name": "min_score", "in": "query", "schema": {"type": "number"},
     "description": "results scoring below it are left out before the page is cut; `total` then counts those "
                    "that reach it"},
    PATHS_PARAM,
    {"name": "rerank", "in": "query", "schema": {"enum": ["off", "diffusion"], "default": "off"},
     "description": "diffusion: re-rank the top results over the collection's similarity graph (copies stay "
                    "first); a result the diffusion brought into the page says found_by: diffusion"},
    {"name": "cluster", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 63},
     "description": "a map cluster's id (GET /api/map): search inside that cluster only"},
]
# Filters, sort and cursor (#18; indexer.filters and docs/library.md say what each matches).
FOLDER_SCHEMA = {"type": "string", "pattern": "^/[^\\x00]*$", "maxLength": MAX_FILTER_TEXT}
WHEN_SCHEMA = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}
FORMAT_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9]{1,16}$"}
DIMENSION_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_DIMENSION}
CAMERA_SCHEMA = {"type": "string", "maxLength": MAX_FILTER_TEXT}
SORT_SCHEMA = {"enum": list(SORTS), "default": "relevance"}
CURSOR_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR}
FILTER_DOCS = {
    "folder": "only pictures in this folder or below it (whole path components); repeat for several (any)",
    "taken_after": "taken on or after this ISO date or datetime (inclusive: a date includes its whole day; "
                   "without an offset, UTC); pictures with no date taken are left out",
    "taken_before": "taken on or before this ISO date or datetime (inclusive: a date includes its whole day)",
    "format": "the file format, case-insensitive (jpeg, jpg, png, heic...); repeat for several (any)",
    "min_width": "at least this many pixels wide",
    "min_height": "at least this many pixels high",
    "camera": "a case-insensitive part of the camera's \"make model\" (iphone, canon eos); repeat for several (any)",
    "sort": f"relevance (best first), or the {SORT_POOL} most relevant matches (with min_score: every match "
            "reaching it) ordered by taken (oldest first), -taken (newest first) or size (most pixels first); "
            "pictures without the key come last",
    "cursor": "the `next` of the previous page, as given: continues after its last result; refused (400 "
              "naming cursor) with another query or once the index changed",
}
LIBRARY_FIELDS = {
    "folder": FOLDER_SCHEMA, "taken_after": WHEN_SCHEMA, "taken_before": WHEN_SCHEMA, "format": FORMAT_SCHEMA,
    "min_width": DIMENSION_SCHEMA, "min_height": DIMENSION_SCHEMA, "camera": CAMERA_SCHEMA, "sort": SORT_SCHEMA,
    "cursor": CURSOR_SCHEMA,
}
REPEATABLE = ("folder", "format", "camera")
LIBRARY_PARAMS = [
    {"name": name, "in": "query", "description": FILTER_DOCS[name],
     "schema": {"type": "array", "items": schema, "maxItems": MAX_FILTER_VALUES} if name in REPEATABLE else schema,
     **({"style": "form", "explode": True} if name in REPEATABLE else {})}
    for name, schema in LIBRARY_FIELDS.items()
]
# In a JSON body a repeatable filter is a string or a list of them.
LIBRARY_BODY_FIELDS = {
    name: {"anyOf": [schema, {"type": "array", "items": schema, "maxItems": MAX_FILTER_VALUES}],
           "description": FILTER_DOCS[name]} if name in REPEATABLE else {**schema, "description": FILTER_DOCS[name]}
    for name, schema in LIBRARY_FIELDS.items()
}
K_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_K}
OFFSET_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}
ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}  # searchapp.routing.MAX_ID
ID_PARAM = {"name": "image_id", "in": "path", "required": True, "schema": ID_SCHEMA}
JOB_PARAM = {"name": "job_id", "in": "path", "required": True,
             "description": "an indexing job's number, or a generation job's id (gen-...)",
             "schema": {"oneOf": [ID_SCHEMA, {"type": "string", "pattern": "^gen-[0-9a-f]{16}$"}]}}
GENERATION_ID_PARAM = {"name": "job_id", "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": "^gen-[0-9a-f]{16}$"}}
BEARER = [{"bearer": []}, {"session": []}]
# Reads need a token only when LOUPE_READ_TOKEN is set (or the server is bound beyond loopback).
READ = [{"bearer": []}, {"session": []}, {}]
NULLABLE_INT = {"type": ["integer", "null"]}
# What indexer.metadata records of a picture (searchapp.services.metadata_facts); null until read.
IMAGE_METADATA_PROPERTIES = {
    "taken_at": {"type": ["string", "null"], "format": "date-time",
                 "description": "when the picture was taken (ISO 8601), in its own UTC offset when known"},
    "taken_source": {"enum": ["exif", "file", None], "description": "EXIF DateTimeOriginal, or the file's time"},
    "taken_offset_min": {"type": ["integer", "null"], "description": "the EXIF offset from UTC in minutes"},
    "camera": {"type": ["object", "null"], "required": ["make", "model"],
               "properties": {"make": {"type": ["string", "null"]}, "model": {"type": ["string", "null"]}}},
    "orientation": {"type": ["integer", "null"], "minimum": 1, "maximum": 8},
    "has_gps": {"type": ["boolean", "null"], "description": "the picture records a position"},
    "folder": {"type": ["string", "null"], "description": "the absolute folder holding the file"},
    "gps": {"type": "object", "required": ["lat", "lon"], "description": "present only with LOUPE_KEEP_GPS",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
}
NULLABLE_STR = {"type": ["string", "null"]}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "Result": {
        "type": "object",
        "required": ["id", "path", "score", "width", "height", "thumb_url", "file_url"],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "score": {"type": "number"},
            "width": NULLABLE_INT,
            "height": NULLABLE_INT,
            "thumb_url": {"type": "string"},
            "file_url": {"type": "string"},
            "preview_url": {"type": "string"},
            "found_by": {"type": "string", "description": "diffusion: brought into the page by rerank=diffusion; "
                                                          "image searches also raw, restored or both"},
        },
    },
    "Results": {
        "type": "object",
        "required": ["results", "total", "took_ms"],
        "properties": {
            "results": {"type": "array", "items": _ref("Result")},
            "total": {"type": "integer", "description": "how many results the listing holds: the pictures "
                                                       "matching the filters (with min_score, those reaching "
                                                       f"it; a sort other than relevance lists at most "
                                                       f"{SORT_POOL})"},
            "took_ms": {"type": "number"},
            "next": {"type": ["string", "null"], "description": "pass it back as `cursor` for the next page; "
                                                                "null on the last"},
        },
    },
    "ImageResult": {
        "allOf": [
            _ref("Result"),
            {
                "type": "object",
                "required": ["match", "region"],
                "properties": {
                    "match": {"enum": ["exact", "near-duplicate", "similar"]},
                    "region": {
                        "description": "[x, y, w, h] in the result's pixels, when a region of it matched",
                        "oneOf": [{"type": "null"},
                                  {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4}],
                    },
                    "found_by": {"enum": ["raw", "restored", "both", "diffusion"],
                                 "description": "when a restoration stage ran: which query's ranking held it; "
                                                "diffusion: brought into the page by rerank=diffusion"},
                    "verification": {
                        "description": "the geometric evidence (local features, RANSAC) that this result shows "
                                       "the query's picture; null when unverified",
                        "oneOf": [{"type": "null"}, _ref("Verification")],
                    },
                },
            },
        ]
    },
    "Verification": {
        "type": "object",
        "required": ["inliers", "overlap_query", "overlap_result", "scale", "rotation_deg", "mirrored", "outline"],
        "properties": {
            "inliers": {"type": "integer", "description": "keypoint matches consistent with one transform"},
            "overlap_query": {"type": "number", "description": "fraction of the query that lies inside the result"},
            "overlap_result": {"type": "number", "description": "fraction of the result the query covers"},
            "scale": {"type": "number", "description": "result pixels per query pixel"},
            "rotation_deg": {"type": "number", "description": "how far the query is turned from the result, "
                                                              "counter-clockwise"},
            "mirrored": {"type": "boolean", "description": "the query is the result flipped left to right"},
            "outline": {"type": "array", "minItems": 4, "maxItems": 4,
                        "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                        "description": "the query's corners (top-left, top-right, bottom-right, bottom-left) "
                                       "in the result's pixels"},
            "relation": {"enum": ["same-frame", "query-in-result", "result-in-query", "partial"],
                         "description": "which way the match goes: the query is a crop of the result "
                                        "(query-in-result), the result is a crop of the query (result-in-query)"},
            "summary": {"type": "string", "description": "what was verified, in words"},
        },
    },
    "ImageResults": {
        "allOf": [
            _ref("Results"),
            {
                "type": "object",
                "required": ["restoration", "copy_found"],
                "properties": {
                    "results": {"type": "array", "items": _ref("ImageResult")},
                    "copy_found": {"type": "boolean",
                                   "description": "whether a result is labelled exact or near-duplicate"},
                    "verify": {
                        "type": "object", "required": ["mode"],
                        "description": "what verification did: near-duplicate needs inliers ≥ inlier_cutoff",
                        "properties": {
                            "mode": {"enum": ["on", "off"]}, "candidates": {"type": "integer"},
                            "checked": {"type": "integer"}, "verified": {"type": "integer"},
                            "inlier_cutoff": {"type": "integer"}, "query_keypoints": {"type": "integer"},
                            "mirrored_tried": {"type": "boolean"}, "mirror_searched": {"type": "boolean"},
                            "ms": {"type": "number"},
                            "note": {"type": "string"},
                        },
                    },
                    "restoration": {
                        "type": "object",
                        "required": ["requested", "detected", "applied"],
                        "properties": {
                            "requested": {"type": "string"},
                            "detected": {"type": "array", "items": {"enum": list(CONDITIONS)},
                                         "description": "conditions found in the query"},
                            "applied": {"type": "array", "items": {"enum": list(STAGES)},
                                        "description": "stages that ran, in order"},
                            "skipped": {"type": "object", "additionalProperties": {"type": "string"},
                                        "description": "stages auto wanted but did not run, with the reason "
                                                       "(a missing model, or a query already verified)"},
                            "noise": {"type": "object", "properties": {
                                "level": {"type": "number", "description": "σ̂ of the model input, grey levels"},
                                "excess": {"type": "number"}, "threshold": {"type": "number"}}},
                            "crop": {"type": ["object", "null"], "properties": {"margin": {"type": "number"}}},
                            "match": {"type": ["object", "null"], "description":
                                      "the raw lookup's best score against the near-duplicate cut-off",
                                      "properties": {"top_score": {"type": "number"}, "cutoff": {"type": "number"}}},
                            "verified": {"type": ["boolean", "null"], "description":
                                         "whether the query as given verified as a copy of a result (null: "
                                         "verification off); auto does not reconstruct a verified query, and a "
                                         "result only a reconstruction found passes the raw results only as a "
                                         "verified copy"},
                            "ms": {"type": "number", "description": "time spent restoring"},
                            "stage_ms": {"type": "object", "additionalProperties": {"type": "number"}},
                            "reconstruction": {"type": ["string", "null"],
                                               "description": "PNG data URL of the reconstructed query"},
                        },
                    }
                },
            },
        ]
    },
    "Map": {
        "type": "object",
        "required": ["points", "clusters"],
        "properties": {
            "points": {"type": "array", "items": {
                "type": "object", "required": ["id", "x", "y", "cluster"],
                "properties": {"id": {"type": "integer"}, "x": {"type": "number"}, "y": {"type": "number"},
                               "cluster": {"type": "integer"}}}},
            "clusters": {"type": "array", "items": {
                "type": "object", "required": ["id", "label", "size", "representatives"],
                "properties": {"id": {"type": "integer"}, "label": {"type": "string"}, "size": {"type": "integer"},
                               "representatives": {"type": "array", "items": {"type": "integer"}},
                               "x": {"type": "number"}, "y": {"type": "number"}}}},
            "total": {"type": "integer", "description": "points of the map (or of the cluster asked for)"},
            "truncated": {"type": "boolean", "description": "true when `points` is a sample of them"},
            "named": {"type": "boolean", "description": "clusters named by the model (trained weights), "
                                                        "else numbered"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "images", "model", "index", "device", "checks"],
        "properties": {
            "status": {"enum": ["ok", "degraded"],
                       "description": "ok when every check is ok (HTTP 200); degraded otherwise (HTTP 503)"},
            "images": {"type": ["integer", "null"], "description": "indexed pictures; null when the catalog "
                                                                   "cannot be read"},
            "model": {
                "type": "object",
                "required": ["architecture", "pretrained", "semantic"],
                "properties": {
                    "architecture": {"type": "string"},
                    "pretrained": {"type": "string"},
                    "checkpoint_sha256": NULLABLE_STR,
                    "embed_dim": NULLABLE_INT,
                    "semantic": {"oneOf": [{"type": "boolean"}, {"const": "unknown"}], "description":
                                 "true for a published pretrained tag, false for untrained weights (none), "
                                 "\"unknown\" for a checkpoint file: Loupe cannot tell whether it is trained"},
                },
            },
            "index": {
                "type": "object",
                "required": ["type", "vectors"],
                "properties": {
                    "faiss": {
                        "type": "object",
                        "description": "the FAISS build loaded: version, built with GPU support, GPUs it sees",
                        "properties": {"version": {"type": "string"}, "gpu_build": {"type": "boolean"},
                                       "gpus": {"type": "integer"}},
                    },
                },
            },
            "device": {"type": "string"},
            "checks": {
                "type": "object",
                "required": ["database", "index", "model", "disk"],
                "description": "readiness, each part with its state and the reason in words",
                "properties": {name: _ref("Check") for name in ("database", "index", "model", "disk")},
            },
        },
    },
    "Check": {
        "type": "object",
        "required": ["state", "reason"],
        "properties": {
            "state": {"enum": ["ok", "degraded"]},
            "reason": {"type": "string", "description": "why, in words, naming no server path or error text"},
            "detail": {"type": "string", "description": "paths and error text, only for callers who may read"},
            "loaded": {"type": "boolean", "description": "index, model: loaded in this process"},
            "free_bytes": {"type": "integer", "description": "disk: free bytes under LOUPE_HOME"},
            "min_free_bytes": {"type": "integer", "description": "disk: the threshold (LOUPE_MIN_FREE_MB)"},
        },
    },
    "Image": {
        "type": "object",
        "required": ["id", "path", "status", "width", "height", "thumb_url", "file_url",
                     *(name for name in IMAGE_METADATA_PROPERTIES if name != "gps")],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "status": {"enum": ["indexed", "duplicate", "failed"]},
            "width": NULLABLE_INT,
            "height": NULLABLE_INT,
            "format": NULLABLE_STR,
            "size_bytes": {"type": "integer"},
            "content_hash": NULLABLE_STR,
            "duplicate_of": NULLABLE_INT,
            "error": NULLABLE_STR,
            "missing": {"type": "boolean"},
            "indexed_at": NULLABLE_STR,
            "thumb_url": {"type": "string"},
            "file_url": {"type": "string"},
            **IMAGE_METADATA_PROPERTIES,


            "preview_url": {"type": "string"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "state", "roots", "files_seen", "added", "failed", "progress"],
        "properties": {
            "id": {"type": "integer"},
            "state": {"enum": ["running", "finished", "failed", "interrupted", "cancelled"]},
            "roots": {"type": "array", "items": {"type": "string"}},
            "files_seen": {"type": "integer"},
            "added": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "skipped": {"type": "integer"},
            "failed": {"type": "integer"},
            "missing": {"type": "integer"},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "seconds": {"type": "number"},
            "error": NULLABLE_STR,
            "started_at": NULLABLE_STR,
            "finished_at": NULLABLE_STR,
        },
    },
}

SCHEMAS["Folders"] = {
    "type": "object",
    "required": ["folders", "total", "next"],
    "properties": {
        "folders": {"type": "array", "items": {
            "type": "object", "required": ["path", "count", "direct"],
            "properties": {"path": {"type": "string"},
                           "count": {"type": "integer", "description": "pictures in it and below it (what "
                                                                      "folder=path matches)"},
                           "direct": {"type": "integer", "description": "pictures directly in it"}}}},
        "total": {"type": "integer", "description": "folders matching q"},
        "next": {"type": ["integer", "null"], "description": "the offset of the next page (null: last)"},
    },
}

SCHEMAS["GenerationJob"] = {
    "type": "object",
    "required": ["id", "kind", "state", "progress", "parameters", "source", "backend", "images", "error"],
    "properties": {
        "id": {"type": "string", "pattern": "^gen-[0-9a-f]{16}$"},
        "kind": {"const": "generate"},
        "state": {"enum": ["queued", "running", "finished", "failed", "cancelled"]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "parameters": {"type": "object", "required": ["n", "strength", "seed", "steps"], "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 8}, "strength": {"type": "number"},
            "seed": {"type": "integer"}, "steps": {"type": "integer"}}},
        "source": {"type": "object", "properties": {"image_id": {"type": "integer"},
                                                    "upload_sha256": {"type": "string"}}},
        "backend": {"type": ["object", "null"], "description": "which model made the pictures, at what resolution",
                    "properties": {"backend": {"enum": ["loupe-ddpm", "diffusers-img2img"]},
                                   "model": {"type": "string"}, "resolution": {"type": "integer"},
                                   "low_resolution": {"type": "boolean"}, "note": {"type": "string"}}},
        "images": {"type": "array", "items": {
            "type": "object", "required": ["url", "seed", "neighbours"],
            "properties": {"url": {"type": "string"}, "seed": {"type": "integer"},
                           "neighbours": {"type": "array", "items": _ref("Result")}}}},
        "error": NULLABLE_STR,
        "seconds": {"type": "number"},
    },
}

SCHEMAS["DuplicateImage"] = {
    "type": "object", "required": ["id", "path", "score", "width", "height", "thumb_url", "file_url", "evidence"],
    "description": "a search result (Result) with what ties it to its group",
    "properties": {
        **SCHEMAS["Result"]["properties"],
        "size_bytes": {"type": "integer"}, "content_hash": NULLABLE_STR, "taken_at": NULLABLE_STR,
        "camera": NULLABLE_STR, "inliers": NULLABLE_INT,
        "evidence": {"enum": ["centre", "exact", "verified", "pixels", "score"],
                     "description": "what ties it to the group: the centre itself, the same bytes, geometric "
                                    "verification, thumbnails alike (too few keypoints to verify), or the "
                                    "embedding's cut-off alone (verification off)"},
    },
}
SCHEMAS["DuplicateGroup"] = {
    "type": "object", "required": ["id", "kind", "images", "keep", "reason"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "stable while its pictures are"},
        "kind": {"enum": ["duplicate", "burst"],
                 "description": "burst: one camera, seconds apart; shown, never suggested for removal"},
        "images": {"type": "array", "minItems": 2, "items": _ref("DuplicateImage")},
        "keep": {"type": "integer", "description": "the picture to keep: most pixels, then earliest taken, then "
                                                   "shortest path"},
        "reason": {"type": "string"},
    },
}
SCHEMAS["DuplicateGroups"] = {
    "type": "object", "required": ["groups", "next"],
    "properties": {"groups": {"type": "array", "items": _ref("DuplicateGroup")}, "next": NULLABLE_STR,
                   "total": {"type": "integer"}},
}
SCHEMAS["QuarantineEntry"] = {
    "type": "object", "required": ["id", "image_id", "original_path", "stored_path"],
    "properties": {"id": {"type": "integer"}, "group": NULLABLE_STR, "image_id": {"type": "integer"},
                   "kept_id": NULLABLE_INT, "original_path": {"type": "string"}, "stored_path": {"type": "string"},
                   "moved_at": {"type": "string"}},
}
GROUP_PARAM = {"name": "group_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}
RESTORED = _json({"type": "object", "required": ["restored"], "properties": {"restored": {
    "type": "array", "items": {"type": "object", "required": ["id", "image_id", "original_path"], "properties": {
        **SCHEMAS["QuarantineEntry"]["properties"],
        "image_id": {"type": "integer", "description": "the picture's new catalog id"}}}}}},
    "the files are back at their paths and in the catalog")
DISMISSED = _json({"type": "object", "required": ["group", "dismissed"],
                   "properties": {"group": {"type": "string"}, "dismissed": {"type": "boolean"}}}, "remembered")


def duplicates_paths() -> dict:
    """The duplicates review's entries of the document."""
    write = {"security": BEARER, "parameters": [GROUP_PARAM]}
    return {
        "/api/duplicates": {"get": {
            "parameters": [
                {"name": "kind", "in": "query", "schema": {"enum": ["duplicate", "burst"]}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                                              "default": 20}},
                {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^(o[0-9]{1,7})?$"},
                 "description": "a page's `next`, for the page after it (empty: the first page)"},
                {"name": "dismissed", "in": "query", "schema": {"enum": ["on", "off"], "default": "off"},
                 "description": "on: include the groups dismissed before"},
                PATHS_PARAM],
            "security": READ,
            "description": "groups of the same picture (exact copies and verified near-duplicates) and of burst "
                           "shots, duplicates first, largest first; computed on the first call after the catalog "
                           "changed (seconds for a large library; 503 busy while another request computes them)",
            "responses": {"200": _json(_ref("DuplicateGroups"), "one page of groups"),
                          **_errors(400, 401, 403), "503": BUSY}}},
        "/api/duplicates/{group_id}/quarantine": {"post": {
            **write,
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"keep": ID_SCHEMA}}}}},
            "description": "moves every picture of the group but the one kept (the suggestion, or `keep`) to "
                           "LOUPE_HOME/quarantine and out of the catalog; refused for burst groups (409) and for "
                           "files outside the folders they were indexed from (403)",
            "responses": {"200": _json({"type": "object", "required": ["group", "kept", "quarantined"], "properties": {
                "group": {"type": "string"}, "kept": {"type": "integer"},
                "quarantined": {"type": "array", "items": _ref("QuarantineEntry")}}}, "moved"),
                **_errors(400, 401, 403, 404, 409), "503": BUSY}}},
        "/api/duplicates/{group_id}/restore": {"post": {
            **write, "responses": {"200": RESTORED, **_errors(401, 403, 404, 409)}}},
        "/api/duplicates/{group_id}/dismiss": {"post": {
            **write, "responses": {"200": DISMISSED, **_errors(401, 403, 404, 409)}}},
        "/api/duplicates/{group_id}/undismiss": {"post": {
            **write, "responses": {"200": DISMISSED, **_errors(401, 403, 404, 409)}}},
        "/api/quarantine": {"get": {"security": READ, "responses": {
            "200": _json({"type": "object", "required": ["entries"], "properties": {
                "entries": {"type": "array", "items": _ref("QuarantineEntry")}}}, "newest first"),
            **_errors(401, 403)}}},
        "/api/quarantine/{entry_id}/restore": {"post": {
            "security": BEARER, "parameters": [{"name": "entry_id", "in": "path", "required": True,
                                                "schema": ID_SCHEMA}],
            "responses": {"200": RESTORED, **_errors(401, 403, 404, 409)}}},
    }


GENERATE_FIELDS = {
    "n": {"type": "integer", "minimum": 1, "maximum": 8, "default": 4},
    "strength": {"type": "number", "minimum": 0.05, "maximum": 1, "default": 0.6,
                 "description": "how far from the source: 0.05 barely changes it, 1 starts from noise"},
    "seed": {"type": "integer", "minimum": 0, "description": "picture i uses seed + i (default: random)"},
    "steps": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    "wait": {"type": "number", "minimum": 0, "maximum": 120, "default": 2,
             "description": "seconds to wait for the result before answering 202 with the running job; the "
                            "server waits at most 5 s whatever is asked (poll Location)"},
}

Q_FIELD = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": f"[^{BLANKS_PATTERN}]",
           "description": "words to combine with the picture (docs/queries.md): `at night`, `-people`, `2:beach`; "
                          "a combined query looks for similar pictures, not copies (no restoration, no "
                          "verification: `restore` may only be auto or off, `verify` only off)"}
SCHEMAS["Combined"] = {
    "type": "object", "required": ["terms"],
    "description": "how the search text was read (present when it used the syntax, or came with a picture)",
    "properties": {
        "terms": {"type": "array", "items": {"type": "object", "required": ["text", "weight"], "properties": {
            "text": {"type": "string"}, "weight": {"type": "number", "description": "negative: subtracted"}}}},
        "image_weight": {"type": "number", "description": "the picture's weight in the sum"},
    },
}
SCHEMAS["Results"]["properties"]["combined"] = _ref("Combined")

IMAGE_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "format": "binary"},
                "k": K_SCHEMA,
                "offset": OFFSET_SCHEMA,
                "restore": {"enum": list(MODES)},
                "q": Q_FIELD,
                **{name: {**schema, "description": FILTER_DOCS[name]} for name, schema in LIBRARY_FIELDS.items()},
            },
        }
    },
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["image_id"],
            "properties": {"image_id": ID_SCHEMA, "k": K_SCHEMA, "offset": OFFSET_SCHEMA, "q": Q_FIELD, **LIBRARY_BODY_FIELDS},
        }
    },
}


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Loupe API", "version": "1", "description": (
            "Every request may also answer 400 `bad_host` (a Host name this server does not answer for: DNS "
            "rebinding) and, when it changes something, 403 `cross_site` (sent from another site's page). "
            "Reads need a token when LOUPE_READ_TOKEN is set or the server is bound beyond loopback; "
            "writes need LOUPE_API_TOKEN when it is set. docs/security.md has the whole picture.")},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "loupe_session",
                            "description": "set by signing in at /login; requests that change something also "
                                           "need the header X-Loupe-Request"},
            },
        },
        "paths": {
            "/api/health": {"get": {
                "description": "liveness and readiness: the database answers, the index is on disk and loads, "
                               "the model is loaded or its weights are on disk, LOUPE_HOME has LOUPE_MIN_FREE_MB free",
                "responses": {"200": _json(_ref("Health"), "ready: every check is ok"),
                              "503": _json(_ref("Health"), "degraded: `checks` say which part and why")}}},
            "/metrics": {"get": {
                "description": "Prometheus metrics (text exposition format). With LOUPE_METRICS_TOKEN set it needs "
                               "that token (or the read or API token); otherwise it follows the read rule",
                "security": READ,
                "responses": {"200": {"description": "the metrics", "content": {"text/plain": {
                                  "schema": {"type": "string"}}}},
                              **_errors(400, 401, 403)}}},
            "/api/search": {
                "get": {
                    "parameters": [{"name": "q", "in": "query", "required": True, "description": "the search text; `+`, `-` and `2:` at a word's start "
                                    "combine weighted terms (docs/queries.md): `beach 2:sunset -people`",
                                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT,
                                               "pattern": f"[^{BLANKS_PATTERN}]"}},
                                   *PAGE_PARAMS, *LIBRARY_PARAMS],
                    "security": READ,
                    "responses": {"200": _json(_ref("Results"), "best first"), **_errors(400, 401, 403, 404, 409),
                                  "503": BUSY},
                }
            },
            "/api/search/image": {
                "post": {
                    "parameters": [
                        *PAGE_PARAMS,
                        *LIBRARY_PARAMS,
                        {"name": "restore", "in": "query", "schema": {"enum": list(MODES), "default": "auto"},
                         "description": "auto: the stages that help for what is detected; off; or one stage "
                                        f"({', '.join(sorted(COSTLY_STAGES))} need the API token when one is set)"},
                        {"name": "regions", "in": "query", "schema": {"enum": ["on", "off"], "default": "on"},
                         "description": "off: match whole pictures only, not their regions"},
                        {"name": "verify", "in": "query", "schema": {"enum": ["on", "off"]},
                         "description": "on (default: LOUPE_VERIFY): verify the top LOUPE_VERIFY_CANDIDATES results "
                                        "with local features; near-duplicate then needs geometric evidence"},
                    ],
                    "requestBody": {"required": True, "content": IMAGE_BODY},
                    "security": READ,
                    "responses": {"200": _json(_ref("ImageResults"), "best first"),
                                  **_errors(400, 401, 403, 404, 409, 413), "503": IMAGE_SEARCH_UNAVAILABLE},
                }
            },
            "/api/folders": {
                "get": {
                    "description": "the folders holding indexed pictures, by path, for the folder picker",
                    "parameters": [
                        {"name": "q", "in": "query", "description": "keep folders whose path contains this "
                                                                   "(case-insensitive)",
                         "schema": {"type": "string", "maxLength": MAX_TEXT}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                    "maximum": 500, "default": 100}},
                        {"name": "offset", "in": "query", "schema": OFFSET_SCHEMA},
                    ],
                    "security": READ,
                    "responses": {"200": _json(_ref("Folders"), "by path"), **_errors(400, 401, 403), "503": BUSY},
                }
            },
            "/api/generate": {
                "post": {
                    "requestBody": {"required": True, "content": {
                        "multipart/form-data": {"schema": {"type": "object", "properties": {
                            "image": {"type": "string", "format": "binary"}, **GENERATE_FIELDS}}},
                        "application/json": {"schema": {"type": "object", "required": ["image_id"], "properties": {
                            "image_id": ID_SCHEMA, **GENERATE_FIELDS}}},
                    }},
                    "security": BEARER,
                    "description": "writes pictures to disk: needs the API token when one is set; at most a few "
                                   "generations wait or run at once (429 with Retry-After beyond)",
                    "responses": {"200": _json(_ref("GenerationJob"), "finished within `wait`"),
                                  "202": _json(_ref("GenerationJob"), "still running: poll Location"),
                                  **_errors(400, 401, 403, 404, 413), "429": RETRY_LATER,
                                  "503": GENERATE_UNAVAILABLE},
                }
            },
            "/api/map": {
                "get": {
                    "parameters": [
                        {"name": "cluster", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 63},
                         "description": "only this cluster's points"},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 20000, "default": 5000},
                         "description": "points at most: beyond it an even sample, the representatives first"},
                    ],
                    "security": READ,
                    "responses": {"200": _json(_ref("Map"), "the map of the collection"),
                                  **_errors(400, 401, 403, 404), "503": BUSY},
                }
            },
            "/api/images": {
                "post": {
                    "security": BEARER,
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "required": ["image"],
                        "properties": {"image": {"type": "string", "format": "binary"}}}}}},
                    "responses": {"201": _json(_ref("Image"), "the indexed image (or the original it duplicates)"),
                                  **_errors(400, 401, 403, 409, 413), "503": BUSY},
                }
            },
            "/api/images/{image_id}": {
                "get": {"parameters": [ID_PARAM, PATHS_PARAM], "security": READ,
                        "responses": {"200": _json(_ref("Image"), "metadata"), **_errors(400, 401, 403, 404)}},
                "delete": {
                    "security": BEARER,
                    "parameters": [ID_PARAM],
                    "responses": {
                        "200": _json({"type": "object", "required": ["removed"],
                                      "properties": {"removed": {"type": "integer"}}}, "removed"),
                        **_errors(401, 403, 404, 409),
                    },
                },
            },
            "/api/jobs": {
                "post": {
                    "security": BEARER,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["paths"],
                        "properties": {"paths": {"type": "array", "items": {"type": "string"}}}}}}},
                    "description": "paths must lie inside LOUPE_ALLOWED_ROOTS (by real path); any other is "
                                   "refused with 403 path_not_allowed, the same answer whether it exists or not",
                    "responses": {"202": _json(_ref("Job"), "started"), **_errors(400, 401, 403, 409, 503)},
                }
            },
            "/api/jobs/{job_id}": {
                "get": {"parameters": [JOB_PARAM], "security": READ, "responses": {
                    "200": _json({"oneOf": [_ref("Job"), _ref("GenerationJob")]}, "state"), **_errors(401, 403, 404)}}
            },
            "/api/jobs/{job_id}/images/{number}/add": {
                "post": {"security": BEARER, "parameters": [
                    GENERATION_ID_PARAM, {"name": "number", "in": "path", "required": True,
                                          "schema": {"type": "integer", "minimum": 0}}],
                    "responses": {"201": _json(_ref("Image"), "the generated picture, now indexed"),
                                  **_errors(401, 403, 404, 409)}}
            },
            "/api/jobs/{job_id}/cancel": {
                "post": {"security": BEARER, "parameters": [JOB_PARAM],
                         "description": "a generation stops within a denoising step; a bulk indexing job of this "
                                        "server stops after its current batch (what it wrote stays)",
                         "responses": {
                             "200": _json({"oneOf": [_ref("Job"), _ref("GenerationJob")]},
                                          "cancellation asked (state becomes cancelled)"),
                             **_errors(401, 403, 404, 409)}}
            },
            "/images/{image_id}/file": {
                "get": {"parameters": [ID_PARAM], "security": READ,
                        "responses": {"200": {"description": "the image bytes"}, **_errors(401, 403, 404)}}
            },
            "/images/{image_id}/thumb": {
                "get": {"parameters": [ID_PARAM], "security": READ,
                        "responses": {"200": {"description": "a JPEG thumbnail"}, **_errors(401, 403, 404)}}
            },
            **duplicates_paths(),


            "/images/{image_id}/preview": {
                "get": {"parameters": [ID_PARAM], "security": READ,
                        "description": "the picture at most 1600 px a side as a JPEG (any indexed format), for "
                                       "viewing; the original bytes are /images/{image_id}/file",
                        "responses": {"200": {"description": "a JPEG preview"}, **_errors(401, 403, 404)}}
            },
        },
    }
