"""The JSON API through Flask's test client: every endpoint, its errors, and the OpenAPI
description checked against the real responses."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from helpers import assert_index_matches_catalog, check_schema, gradient_png, run_json
from searchapp import create_app
from searchapp.settings import ServiceSettings


@pytest.fixture
def indexed(env, photos, index_photos):
    index_photos(env, photos)
    return env


def make_app(settings, **config):
    """The app on `settings`: the service's own, or the core's with the service's defaults."""
    service = settings if isinstance(settings, ServiceSettings) else ServiceSettings(settings)
    return create_app({"TESTING": True, "LOUPE_SETTINGS": service, **config})


@pytest.fixture
def app(indexed, settings, tmp_path):
    from dataclasses import replace

    # Jobs over HTTP may index only inside LOUPE_ALLOWED_ROOTS: here, the test's folder.
    return make_app(replace(settings, allowed_roots=(tmp_path,)))


@pytest.fixture
def client(app):
    return app.test_client()


def upload(path_or_bytes, name="query.jpg", **fields):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return {"image": (io.BytesIO(data), name), **{k: str(v) for k, v in fields.items()}}


def test_create_app_loads_nothing_until_asked(settings):
    app = make_app(settings)
    service = app.extensions["loupe"]
    assert service._library is None and service._embedder is None


def test_health(client, env):
    body = check_schema(client.get("/api/health"), "/api/health")
    assert body["status"] == "ok" and body["images"] == 24 and body["device"] == "cpu"
    assert body["model"]["architecture"] == env["LOUPE_MODEL"] and body["model"]["semantic"] is False
    assert body["index"]["type"] == "Flat"
    assert body["index"]["faiss"]["gpu_build"] is False and body["index"]["faiss"]["gpus"] == 0


def test_checkpoint_file_weights_are_of_unknown_training(env, photos, embedder, tmp_path):
    import torch

    from indexer.settings import Settings

    checkpoint = tmp_path / "weights.pt"
    torch.save(embedder.model.state_dict(), checkpoint)
    file_env = {**env, "LOUPE_PRETRAINED": str(checkpoint)}
    client = make_app(Settings.from_env(file_env)).test_client()
    body = check_schema(client.get("/api/health"), "/api/health")  # nothing indexed: the setting
    assert body["model"]["semantic"] == "unknown" and body["index"]["faiss"]["gpus"] == 0
    run_json(["index", str(photos), "--no-progress"], file_env)
    body = check_schema(client.get("/api/health"), "/api/health")  # the index's identity
    assert body["model"]["pretrained"] == "file" and body["model"]["semantic"] == "unknown"
    html = client.get("/").get_data(as_text=True)
    assert 'id="unknown-weights-banner"' in html and 'id="untrained-banner"' not in html
    assert "cannot tell whether they are trained" in html


def test_text_search_pages(client):
    first = check_schema(client.get("/api/search?q=a+cat&k=5"), "/api/search")
    assert len(first["results"]) == 5 and first["total"] == 24
    second = check_schema(client.get("/api/search?q=a+cat&k=5&offset=5"), "/api/search")
    assert {r["id"] for r in first["results"]}.isdisjoint(r["id"] for r in second["results"])
    everything = client.get("/api/search?q=a+cat&k=200").get_json()
    assert len(everything["results"]) == 24
    scores = [r["score"] for r in everything["results"]]
    cut = scores[len(scores) // 2]  # a real cosine inside the range, not one no result can reach
    some = client.get(f"/api/search?q=a+cat&k=200&min_score={cut!r}").get_json()
    assert [r["score"] for r in some["results"]] == [s for s in scores if s >= cut]
    assert 0 < len(some["results"]) < len(scores)


def test_min_score_applies_before_paging(client):
    """Results under min_score are left out before the page is cut: a page is full while more
    results reach it, and `total` counts only those (text, and an image search whose
    verification re-ranks)."""
    everything = client.get("/api/search?q=a+cat&k=200").get_json()
    scores = [r["score"] for r in everything["results"]]
    cut = scores[len(scores) // 2]
    above = [s for s in scores if s >= cut]
    first = check_schema(client.get(f"/api/search?q=a+cat&k=3&min_score={cut!r}"), "/api/search")
    assert [r["score"] for r in first["results"]] == above[:3] and first["total"] == len(above)
    rest = client.get(f"/api/search?q=a+cat&k=200&offset=3&min_score={cut!r}").get_json()
    assert [r["score"] for r in rest["results"]] == above[3:] and rest["total"] == len(above)

    ranked = client.post("/api/search/image?k=200", json={"image_id": 1}).get_json()["results"]
    cut = sorted(r["score"] for r in ranked)[len(ranked) // 2]
    kept = [r["id"] for r in ranked if r["score"] >= cut]
    page = check_schema(client.post(f"/api/search/image?k=3&min_score={cut!r}", json={"image_id": 1}),
                        "/api/search/image", "post")
    assert [r["id"] for r in page["results"]] == kept[:3] and page["total"] == len(kept)


@pytest.mark.parametrize("query, message", [
    ("", "q="), ("q=x&k=0", "between 1 and 200"), ("q=x&k=201", "between 1 and 200"),
    ("q=x&k=ten", "integer"), ("q=x&offset=-1", "offset"), ("q=x&min_score=high", "min_score"),
])
def test_text_search_bad_parameters(client, query, message):
    response = client.get(f"/api/search?{query}")
    assert response.status_code == 400 and message in check_schema(response, "/api/search")["message"]


def test_upload_finds_its_original_first(client, photos):
    original = next(photos.rglob("coffee-0.*"))
    response = client.post("/api/search/image?k=3", data=upload(original), content_type="multipart/form-data")
    body = check_schema(response, "/api/search/image", "post")
    assert body["results"][0]["path"] == str(original)
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert body["restoration"]["requested"] == "auto"


def test_upload_of_an_indexed_file_is_an_exact_copy(client, photos):
    original = next(photos.rglob("coffee-0.*"))
    body = client.post("/api/search/image?k=3", data=upload(original), content_type="multipart/form-data").get_json()
    assert body["results"][0]["match"] == "exact" and body["results"][0]["region"] is None
    assert body["copy_found"] is True
    assert all(r["match"] in ("near-duplicate", "similar") for r in body["results"][1:])


def test_a_picture_unlike_the_collection_has_no_copy(client):
    """A synthetic gradient is nothing like the photographs: no result is labelled a copy."""
    response = client.post("/api/search/image?k=5", data=upload(gradient_png(), "ramp.png"),
                           content_type="multipart/form-data")
    body = check_schema(response, "/api/search/image", "post")
    assert body["copy_found"] is False
    assert {r["match"] for r in body["results"]} == {"similar"}


def test_crop_upload_reports_the_matching_region(client, photos):
    from indexer.regions import region_boxes

    original = next(photos.rglob("rocket-0.*"))
    with Image.open(original) as img:
        picture = img.convert("RGB")
    box = region_boxes(picture.width, picture.height)[0]
    buf = io.BytesIO()
    picture.crop((box.x, box.y, box.x + box.w, box.y + box.h)).save(buf, "PNG")
    body = check_schema(
        client.post("/api/search/image?k=3", data=upload(buf.getvalue(), "crop.png"), content_type="multipart/form-data"),
        "/api/search/image", "post")
    # rocket's other files are crops of it too, so the original need not come first; it is
    # found through exactly this region, at a score near 1.
    found = next(r for r in body["results"] if r["path"] == str(original))
    assert found["region"] == box.as_list() and found["score"] > 0.99
    off = client.post("/api/search/image?k=3&regions=off", data=upload(buf.getvalue(), "crop.png"),
                      content_type="multipart/form-data").get_json()
    assert all(r["region"] is None for r in off["results"])
    bad = client.post("/api/search/image?regions=maybe", data=upload(buf.getvalue(), "crop.png"),
                      content_type="multipart/form-data")
    assert bad.status_code == 400 and "regions" in bad.get_json()["message"]


def test_more_like_this_by_image_id(client, photos):
    first = client.get("/api/search?q=x&k=1").get_json()["results"][0]
    response = client.post("/api/search/image", json={"image_id": first["id"], "k": 5})
    body = check_schema(response, "/api/search/image", "post")
    assert len(body["results"]) == 5 and first["id"] not in {r["id"] for r in body["results"]}


@pytest.mark.parametrize("data, json, status, code", [
    (None, {}, 400, "missing_image"),
    (None, {"image_id": "seven"}, 400, "bad_parameter"),
    (None, {"image_id": 999999}, 404, "not_indexed"),
    ({"image": (io.BytesIO(b""), "empty.jpg")}, None, 400, "bad_image"),
    ({"image": (io.BytesIO(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "x.png")}, None, 400, "bad_image"),
    ({"image": (io.BytesIO(b"\xff\xd8\xff\xe0\x00\x10JFIF"), "cut.jpg")}, None, 400, "bad_image"),
])
def test_image_search_errors(client, data, json, status, code):
    if data is not None:
        response = client.post("/api/search/image", data=data, content_type="multipart/form-data")
    else:
        response = client.post("/api/search/image", json=json)
    assert response.status_code == status
    assert check_schema(response, "/api/search/image", "post")["error"] == code


def test_upload_too_large_is_413(indexed, settings):
    client = make_app(settings, MAX_CONTENT_LENGTH=10_000).test_client()
    big = io.BytesIO()
    Image.effect_noise((200, 200), 80).convert("RGB").save(big, "PNG")
    response = client.post("/api/search/image", data={"image": (io.BytesIO(big.getvalue()), "big.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 413 and response.get_json()["error"] == "request_entity_too_large"


def test_decompression_bomb_upload_is_400(indexed, settings):
    client = make_app(settings, MAX_UPLOAD_PIXELS=1_000_000).test_client()
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    response = client.post("/api/search/image", data={"image": (io.BytesIO(bomb.getvalue()), "bomb.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 400 and "pixel" in response.get_json()["message"]


def test_bad_restore_mode(client, photos):
    response = client.post("/api/search/image", data=upload(next(photos.rglob("*-0.jpg")), restore="magic"),
                           content_type="multipart/form-data")
    assert response.status_code == 400 and "restore" in response.get_json()["message"]


def test_image_metadata_file_and_thumbnail(client, photos):
    result = client.get("/api/search?q=x&k=1").get_json()["results"][0]
    meta = check_schema(client.get(f"/api/images/{result['id']}"), "/api/images/{image_id}")
    assert meta["path"] == result["path"] and meta["status"] == "indexed"
    file = client.get(result["file_url"])
    assert file.status_code == 200 and file.mimetype.startswith("image/")
    with open(result["path"], "rb") as fh:
        assert file.data == fh.read()
    thumb = client.get(result["thumb_url"])
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert "immutable" in thumb.headers["Cache-Control"]
    assert max(Image.open(io.BytesIO(thumb.data)).size) <= 320
    again = client.get(result["thumb_url"], headers={"If-None-Match": thumb.headers["ETag"]})
    assert again.status_code == 304
    assert client.get("/api/images/999999").status_code == 404
    assert client.get("/images/999999/file").status_code == 404


def test_ids_beyond_the_catalog_range_are_client_errors_never_server_errors(client):
    """Ids larger than a BIGINT used to reach the database and answer 500."""
    huge = 14058399832031642496532480
    for url in (f"/api/images/{huge}", f"/images/{huge}/file", f"/images/{huge}/thumb", f"/api/jobs/{huge}",
                f"/api/images/{2**63}", "/api/images/0"):
        response = client.get(url)
        assert response.status_code == 404 and response.is_json, url
    assert client.get(f"/api/images/{2**63 - 1}").get_json()["error"] == "not_found"  # the largest id is an id
    for path in ("/api/search/image", "/api/generate"):
        for bad in (huge, 0, -3, True, "x"):
            response = client.post(path, json={"image_id": bad})
            assert response.status_code == 400 and response.get_json()["error"] == "bad_parameter", (path, bad)
    deleted = client.delete(f"/api/images/{huge}")  # no route takes the id: refused, not attempted
    assert 400 <= deleted.status_code < 500 and deleted.is_json


def test_no_request_path_reaches_the_file_system(client):
    for url in ("/images/..%2F..%2Fetc%2Fpasswd/file", "/images/%2Fetc%2Fpasswd/file", "/images/-1/file",
                "/static/..%2F..%2Fpyproject.toml", "/images/1/../../../etc/passwd"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"root:" not in response.data


def test_generate_without_a_generator_is_503_with_the_remedy(client):
    response = client.post("/api/generate", json={"image_id": 1})
    body = check_schema(response, "/api/generate", "post")
    assert response.status_code == 503 and body["error"] == "generator_unavailable"
    assert "loupe train-generator" in body["message"]


def test_unknown_endpoint_and_method_are_json(client):
    assert client.get("/api/nope").get_json()["error"] == "not_found"
    response = client.get("/api/jobs")
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"


def test_add_and_delete_images(client, settings, photo_arrays, tmp_path):
    new = io.BytesIO()
    Image.fromarray(photo_arrays["astronaut"][::-1, ::-1]).save(new, "PNG")
    response = client.post("/api/images", data={"image": (io.BytesIO(new.getvalue()), "flipped.png")},
                           content_type="multipart/form-data")
    body = check_schema(response, "/api/images", "post")
    assert response.status_code == 201 and body["status"] == "indexed"
    search = client.post("/api/search/image?k=1", data={"image": (io.BytesIO(new.getvalue()), "q.png")},
                         content_type="multipart/form-data").get_json()
    assert search["results"][0]["id"] == body["id"]
    again = client.post("/api/images", data={"image": (io.BytesIO(new.getvalue()), "same.png")},
                        content_type="multipart/form-data")
    assert again.status_code == 201 and again.get_json()["id"] == body["id"]
    deleted = client.delete(f"/api/images/{body['id']}")
    assert check_schema(deleted, "/api/images/{image_id}", "delete") == {"removed": body["id"]}
    assert client.get(f"/api/images/{body['id']}").status_code == 404
    assert client.delete(f"/api/images/{body['id']}").status_code == 404
    assert len(assert_index_matches_catalog(settings)) == 24


def test_bulk_job_through_the_api(client, settings, photo_arrays, tmp_path):
    folder = tmp_path / "more"
    folder.mkdir()
    for i, pixels in enumerate(photo_arrays.values()):
        Image.fromarray(pixels[::2, ::-2]).save(folder / f"m{i}.jpg")
    response = client.post("/api/jobs", json={"paths": [str(folder)]})
    started = check_schema(response, "/api/jobs", "post")
    assert response.status_code == 202
    deadline = time.monotonic() + 60
    while True:
        job = check_schema(client.get(f"/api/jobs/{started['id']}"), "/api/jobs/{job_id}")
        if job["state"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert job["state"] == "finished" and job["added"] == 8 and job["progress"] == 1.0
    assert client.get("/api/health").get_json()["images"] == 32
    hit = client.post("/api/search/image?k=1", data=upload(folder / "m0.jpg"),
                      content_type="multipart/form-data").get_json()["results"][0]
    assert hit["path"] == str(folder / "m0.jpg")
    assert len(assert_index_matches_catalog(settings)) == 32


@pytest.mark.parametrize("body, message", [
    ({}, "paths"), ({"paths": []}, "paths"), ({"paths": ["relative/dir"]}, "absolute"),
    ({"paths": ["{tmp}/no/such/folder"]}, "no such file"),
])
def test_bulk_job_bad_input(client, body, message, tmp_path):
    if body.get("paths"):  # inside the allowed root (tmp_path), so the answer may say it is missing
        body = {"paths": [p.replace("{tmp}", str(tmp_path)) for p in body["paths"]]}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 400 and message in response.get_json()["message"]


def test_write_endpoints_need_the_token_when_set(indexed, settings, photos):
    client = make_app(ServiceSettings(settings, api_token="s3cret-token")).test_client()
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                            ({"Authorization": "Basic s3cret-token"}, 401)):
        assert client.delete("/api/images/1", headers=headers).status_code == status
        assert client.post("/api/jobs", json={"paths": [str(photos)]}, headers=headers).status_code == status
        add_generated = client.post("/api/jobs/gen-0123456789abcdef/images/0/add", headers=headers)
        assert add_generated.status_code == status  # the token is checked before the picture is looked up
    assert client.get("/api/search?q=x").status_code == 200  # reads stay open
    ok = client.delete("/api/images/1", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200


def test_index_saved_by_another_process_is_picked_up(client, env, settings, photo_arrays, tmp_path):
    assert client.get("/api/health").get_json()["images"] == 24
    client.get("/api/search?q=x")  # the index is now loaded
    folder = tmp_path / "later"
    folder.mkdir()
    Image.fromarray(photo_arrays["coins"][::-1]).save(folder / "later.png")
    run_json(["index", str(folder), "--no-progress"], env)  # another "process" (its own Library)
    body = client.get("/api/search?q=x&k=200").get_json()
    assert body["total"] == 25 and str(folder / "later.png") in {r["path"] for r in body["results"]}


def test_security_headers_on_page_and_api(client):
    page = client.get("/")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    for response in (page, client.get("/api/health")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"


def test_page_shows_untrained_banner_and_counts(client):
    html = client.get("/").get_data(as_text=True)
    assert 'id="untrained-banner"' in html and "24 pictures" in html
    assert 'id="unknown-weights-banner"' not in html


def test_search_before_anything_is_indexed(env, settings):
    client = make_app(settings).test_client()
    response = client.get("/api/search?q=cat")
    assert response.status_code == 404 and "loupe index" in response.get_json()["message"]
    assert client.get("/api/health").get_json()["images"] == 0
    assert "Nothing is indexed yet" in client.get("/").get_data(as_text=True)


def test_openapi_document_is_valid_and_served(client):
    from jsonschema.validators import Draft202012Validator

    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    app_rules = {rule.rule for rule in client.application.url_map.iter_rules() if rule.rule.startswith("/api/")}
    documented = {p.replace("{image_id}", "<id:image_id>").replace("{job_id}", job).replace("{number}", "<int:number>")
                  .replace("{group_id}", "<group_id>").replace("{entry_id}", "<id:entry_id>")
                  for p in doc["paths"] for job in ("<id:job_id>", "<job_id>")}
    assert app_rules - {"/api/openapi.json"} <= documented


def test_uploads_are_never_served_back_as_html_or_svg(client):
    png = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(png, "PNG")
    for name in ("evil.html", "evil.svg", "../../evil.png"):
        added = client.post("/api/images", data={"image": (io.BytesIO(png.getvalue()), name)},
                            content_type="multipart/form-data").get_json()
        served = client.get(added["file_url"])
        assert served.mimetype == "image/png" and served.headers["X-Content-Type-Options"] == "nosniff"
        assert added["path"].endswith(".png") and "/uploads/" in added["path"]
    svg = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"
    refused = client.post("/api/images", data={"image": (io.BytesIO(svg), "x.svg")}, content_type="multipart/form-data")
    assert refused.status_code == 400


def test_serve_never_enables_debug(settings, monkeypatch):
    import argparse

    import flask
    import waitress

    from searchapp.cli.serve import cmd_serve

    seen = {}
    monkeypatch.setattr(waitress, "serve", lambda app, **kw: seen.update(app=app, kw=kw))
    monkeypatch.setattr(flask.Flask, "run", lambda self, **kw: seen.update(dev_app=self, dev_kw=kw))
    args = argparse.Namespace(host="127.0.0.1", port=0, threads=2, dev=False)
    assert cmd_serve(ServiceSettings(settings), args, io.StringIO()) == 0
    assert seen["app"].debug is False and seen["kw"]["threads"] == 2
    args.dev = True
    cmd_serve(ServiceSettings(settings), args, io.StringIO())
    assert seen["dev_kw"]["debug"] is False


def test_secrets_are_never_logged(indexed, settings, caplog):
    import logging

    secret = "very-secret-token-123"
    client = make_app(ServiceSettings(settings, api_token=secret)).test_client()
    with caplog.at_level(logging.DEBUG):
        client.delete("/api/images/1", headers={"Authorization": f"Bearer {secret}x"})
        client.delete("/api/images/2", headers={"Authorization": f"Bearer {secret}"})
        client.get("/api/health")
        client.post("/api/jobs", json={"paths": ["/nonexistent"]}, headers={"Authorization": f"Bearer {secret}"})
    assert secret not in caplog.text
    assert secret not in json.dumps(client.get("/api/health").get_json())


def test_uploads_recalibrate_in_the_background_not_in_the_request(client, monkeypatch, photo_arrays):
    """A single upload must not pay for a leave-one-out search of the collection: when the
    index has grown enough, the cut-offs are recalibrated on a background thread."""
    import threading

    from indexer.library import Library

    calls: list[str] = []
    real = Library.calibrate

    def recording(self, *args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Library, "calibrate", recording)
    service = client.application.extensions["loupe"]
    for i in range(4):  # 24 → 28 images: more than 10% growth since the last calibration
        png = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(photo_arrays["coins"][:, i * 7:])).save(png, "PNG")
        response = client.post("/api/images", data={"image": (io.BytesIO(png.getvalue()), f"c{i}.png")})
        assert response.status_code == 201
    service.indexing_jobs.calibration.thread.join(timeout=60)
    assert calls and set(calls) == {"loupe-calibrate"}
    assert client.get("/api/health").get_json()["images"] == 28
    status = service.library
    assert not status.needs_calibration()


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_crop_is_a_verified_copy_with_its_overlap(client, photos):
    original = next(photos.rglob("chelsea-0.*"))
    with Image.open(original) as img:
        picture = img.convert("RGB")
    w, h = picture.size
    part = picture.crop((w // 5, h // 6, w // 5 + int(w * 0.63), h // 6 + int(h * 0.63)))  # 40 % of the area
    response = client.post("/api/search/image?k=5", data=upload(_png(part), "crop.png"),
                           content_type="multipart/form-data")
    body = check_schema(response, "/api/search/image", "post")
    assert body["verify"]["mode"] == "on" and body["verify"]["candidates"] == 30
    first = body["results"][0]
    assert first["match"] == "near-duplicate" and body["copy_found"] is True
    assert first["path"] == str(original) or "chelsea" in first["path"]  # its crops in the collection may verify too
    found = next(r for r in body["results"] if r["path"] == str(original))["verification"]
    assert found["inliers"] >= body["verify"]["inlier_cutoff"]
    assert found["overlap_result"] == pytest.approx(0.4, abs=0.04) and found["overlap_query"] > 0.95
    assert found["relation"] == "query-in-result" and found["mirrored"] is False
    assert np.abs(np.array(found["outline"][0]) - (w // 5, h // 6)).max() < 5
    # Every result labelled a copy carries its evidence; the others are similar at most.
    for result in body["results"]:
        assert (result["match"] == "near-duplicate") == (result["verification"] is not None)


def test_a_mirrored_upload_verifies_as_mirrored(client, photos):
    original = next(photos.rglob("motorcycle-0.*"))
    with Image.open(original) as img:
        flipped = img.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT)
    body = client.post("/api/search/image?k=10", data=upload(_png(flipped), "m.png"),
                       content_type="multipart/form-data").get_json()
    verified = [r for r in body["results"] if r["verification"]]
    if not any(r["path"] == str(original) for r in body["results"]):
        pytest.skip("the untrained tiny model did not bring the original into the candidates")
    assert verified and verified[0]["verification"]["mirrored"] is True and body["verify"]["mirrored_tried"]


def test_verify_off_keeps_the_score_labels_and_bad_values_are_400(client, photos):
    original = next(photos.rglob("coffee-0.*"))
    off = client.post("/api/search/image?k=3&verify=off", data=upload(original), content_type="multipart/form-data")
    body = check_schema(off, "/api/search/image", "post")
    assert body["verify"] == {"mode": "off"} and body["results"][0]["match"] == "exact"
    assert all(r["verification"] is None for r in body["results"])
    bad = client.post("/api/search/image?verify=maybe", data=upload(original), content_type="multipart/form-data")
    assert bad.status_code == 400 and bad.get_json()["error"] == "bad_parameter" and "verify" in bad.get_json()["message"]


def test_more_like_this_is_verified_with_stored_features(client, photos):
    original = next(photos.rglob("astronaut-0.*"))
    listing = client.post("/api/search/image?k=1&verify=off", data=upload(original),
                          content_type="multipart/form-data").get_json()
    image_id = listing["results"][0]["id"]
    body = check_schema(client.post("/api/search/image", json={"image_id": image_id, "k": 10}),
                        "/api/search/image", "post")
    assert body["verify"]["mode"] == "on"
    crops = [r for r in body["results"] if "astronaut" in r["path"]]
    assert crops and all(r["match"] == "near-duplicate" and r["verification"] for r in crops)
    assert body["results"][: len(crops)] == crops  # verified copies rank first


def test_loupe_verify_off_is_the_default_that_a_request_overrides(indexed, settings, photos):
    from dataclasses import replace

    client = make_app(replace(settings, verify=False, verify_candidates=5)).test_client()
    original = next(photos.rglob("coins-0.*"))
    default = client.post("/api/search/image?k=3", data=upload(original), content_type="multipart/form-data")
    assert default.get_json()["verify"] == {"mode": "off"}
    asked = client.post("/api/search/image?k=3&verify=on", data=upload(original), content_type="multipart/form-data")
    body = check_schema(asked, "/api/search/image", "post")
    assert body["verify"]["mode"] == "on" and body["verify"]["candidates"] == 5
    assert body["results"][0]["match"] == "exact" and body["results"][0]["verification"]["relation"] == "same-frame"
