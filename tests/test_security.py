"""Attacks on the service, each one refused: a bind beyond loopback without a token, DNS
rebinding, cross-site forms, reads without the read token, job paths that escape the allowed
roots, files swapped for symlinks after indexing, floods of costly requests, decode bombs,
FIFOs, lock leaks and deep pages (docs/security.md)."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image

from conftest import make_env, write_photo_folder
from helpers import run_cli, run_json
from searchapp import create_app
from searchapp.settings import ServiceSettings

TOKEN = "write-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """A home with the 24 photographs indexed, built once for the tests that only read."""
    from indexer.settings import Settings

    folder = tmp_path_factory.mktemp("security")
    env = make_env(folder, models_dir)
    photos = write_photo_folder(folder / "photos", photo_arrays)
    run_json(["index", str(photos), "--no-progress"], env)
    return Settings.from_env(env), env, photos


@pytest.fixture
def indexed(env, photos, settings, index_photos):
    """A home of its own with the photographs indexed, for tests that change it."""
    index_photos(env, photos)
    return settings


def make_app(settings, **config):
    """The app on `settings`: the service's own, or the core's with the service's defaults."""
    service = settings if isinstance(settings, ServiceSettings) else ServiceSettings(settings)
    return create_app({"TESTING": True, "LOUPE_SETTINGS": service, **config})


def png_bytes(colour=(200, 10, 10), size=(24, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- exposure: who can reach the port ------------------------------------------------------------------
@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("photos.lan", False), ("", False),
])
def test_loopback_is_told_apart(host, loopback):
    from searchapp.security import is_loopback

    assert is_loopback(host) is loopback


def test_serve_refuses_the_network_without_a_token(env, monkeypatch):
    import waitress

    served = []
    monkeypatch.setattr(waitress, "serve", lambda app, **kw: served.append((app, kw)))
    code, _, err = run_cli(["serve", "--host", "0.0.0.0", "--port", "0"], env)
    assert code == 1 and "refusing to serve on 0.0.0.0 without LOUPE_API_TOKEN" in err and not served

    code, out, _ = run_cli(["serve", "--host", "0.0.0.0", "--port", "0", "--insecure-no-token"], env)
    assert code == 0 and "WARNING" in out
    page = served[-1][0].test_client().get("/", headers={"Host": "192.168.1.20:8765"})
    assert page.status_code == 200 and 'id="insecure-banner"' in page.get_data(as_text=True)

    code, out, _ = run_cli(["serve", "--host", "0.0.0.0", "--port", "0"], {**env, "LOUPE_API_TOKEN": TOKEN})
    assert code == 0 and "reads need" in out
    client = served[-1][0].test_client()
    # Beyond loopback, one token guards everything: reads need the API token too.
    assert client.get("/api/search?q=x").status_code == 401
    assert client.get("/api/search?q=x", headers=bearer(TOKEN)).status_code in (200, 404)  # 404: nothing indexed
    assert 'id="insecure-banner"' not in client.get("/login").get_data(as_text=True)

    code, _, _ = run_cli(["serve", "--port", "0"], env)  # loopback needs no token
    assert code == 0


def test_settings_never_print_secrets(env):
    settings = ServiceSettings.from_env({**env, "LOUPE_API_TOKEN": TOKEN, "LOUPE_READ_TOKEN": READ_TOKEN,
                                  "LOUPE_DATABASE_URL": "postgresql+psycopg://loupe:hunter2@db/loupe"})
    text = repr(settings) + str(settings)
    assert TOKEN not in text and READ_TOKEN not in text and "hunter2" not in text


def test_home_is_created_owner_only(tmp_path, tiny_model_config, models_dir):
    from indexer.settings import Settings

    env = {**make_env(tmp_path, models_dir), "LOUPE_HOME": str(tmp_path / "fresh" / "home")}
    assert run_cli(["status"], env)[0] == 0
    assert (Settings.from_env(env).home.stat().st_mode & 0o777) == 0o700


# -- DNS rebinding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/", "/api/search?q=x", "/api/images/1", "/images/1/file", "/images/1/thumb",
                                 "/api/health"])
def test_a_foreign_host_header_is_refused(shared, url):
    """A page on evil.example rebinds its name to 127.0.0.1: the browser then sends its own
    name as Host, and the server answers nothing."""
    settings, _, _ = shared
    client = make_app(settings).test_client()
    for host in ("evil.example", "evil.example:8765", "localhost.evil.example", "127.0.0.1.nip.io"):
        response = client.get(url, headers={"Host": host})
        assert response.status_code == 400 and response.get_json()["error"] == "bad_host", (url, host)
    for host in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765", "LOCALHOST"):
        assert client.get(url, headers={"Host": host}).status_code != 400, (url, host)


def test_configured_host_names_are_answered(shared):
    settings, _, _ = shared
    client = make_app(ServiceSettings(settings, trusted_hosts=("photos.lan", ".home.arpa"))).test_client()
    assert client.get("/api/health", headers={"Host": "photos.lan:8765"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "nas.home.arpa"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "evil.example"}).status_code == 400


# -- cross-site requests ------------------------------------------------------------------------------
CROSS_SITE = [
    {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
    {"Origin": EVIL},  # a browser without Fetch Metadata
    {"Origin": "null"},  # a sandboxed frame or a file: page
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain
    {"Origin": "http://localhost:9999"},  # another port is another origin
]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_site_forms_change_nothing(indexed, headers):
    """A form on evil.example posts multipart to the loopback server (a simple request: no
    preflight). Every request that changes or costs something is refused before it runs."""
    client = make_app(indexed).test_client()
    before = client.get("/api/health").get_json()["images"]
    form = lambda: {"image": (io.BytesIO(png_bytes()), "x.png")}  # noqa: E731
    attempts = [
        client.post("/api/images", data=form(), headers=headers),
        client.post("/api/search/image", data=form(), headers=headers),
        client.post("/api/generate", data=form(), headers=headers),
        client.post("/api/jobs/gen-0123456789abcdef/images/0/add", headers=headers),
        client.post("/api/jobs", json={"paths": ["/"]}, headers=headers),
        client.delete("/api/images/1", headers=headers),
        client.post("/login", data={"token": "x"}, headers=headers),
    ]
    for response in attempts:
        assert response.status_code == 403 and response.get_json()["error"] == "cross_site", response.request.path
    assert client.get("/api/health").get_json()["images"] == before
    assert client.get("/api/images/1").status_code == 200


def test_the_page_and_plain_clients_may_write(indexed):
    client = make_app(indexed).test_client()
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin", "X-Loupe-Request": "1"}
    added = client.post("/api/images", data={"image": (io.BytesIO(png_bytes()), "x.png")}, headers=same)
    assert added.status_code == 201
    plain = client.post("/api/images", data={"image": (io.BytesIO(png_bytes((1, 2, 3))), "y.png")})
    assert plain.status_code == 201  # curl and scripts send neither Origin nor Sec-Fetch-Site


# -- reads when a read token is set --------------------------------------------------------------------
def test_reads_need_the_read_token(shared):
    settings, _, _ = shared
    client = make_app(ServiceSettings(settings, api_token=TOKEN, read_token=READ_TOKEN)).test_client()
    for url in ("/api/search?q=x", "/api/images/1", "/images/1/file", "/images/1/thumb", "/api/jobs/1",
                "/api/jobs/gen-0123456789abcdef", "/generated/gen-0123456789abcdef/0.png"):
        response = client.get(url)
        assert response.status_code == 401 and response.get_json()["error"] == "unauthorized", url
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get(url, headers=bearer("wrong")).status_code == 403, url
    search = client.post("/api/search/image", json={"image_id": 1})
    assert search.status_code == 401
    for token in (READ_TOKEN, TOKEN):  # the API token can read too
        assert client.get("/api/search?q=x", headers=bearer(token)).status_code == 200
        assert client.get("/images/1/file", headers=bearer(token)).status_code == 200
    assert client.get("/api/health").status_code == 200  # liveness stays open
    assert client.get("/api/openapi.json").status_code == 200
    page = client.get("/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")


def test_the_read_token_cannot_write(indexed):
    client = make_app(ServiceSettings(indexed, api_token=TOKEN, read_token=READ_TOKEN)).test_client()
    response = client.post("/api/images", data={"image": (io.BytesIO(png_bytes()), "x.png")},
                           headers=bearer(READ_TOKEN))
    assert response.status_code == 403 and "API token" in response.get_json()["message"]
    assert client.delete("/api/images/1", headers=bearer(READ_TOKEN)).status_code == 403


def test_signing_in_sets_a_strict_cookie_that_is_not_the_token(shared):
    settings, _, _ = shared
    client = make_app(ServiceSettings(settings, api_token=TOKEN, read_token=READ_TOKEN)).test_client()
    refused = client.post("/login", data={"token": "guess"})
    assert refused.status_code == 401 and "not valid" in refused.get_data(as_text=True)
    signed = client.post("/login", data={"token": READ_TOKEN})
    assert signed.status_code == 303
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and READ_TOKEN not in cookie
    assert client.get("/").status_code == 200
    assert client.get("/images/1/file").status_code == 200  # image tags send the cookie
    # A request that changes something needs the page's header besides the cookie.
    assert client.post("/api/search/image", json={"image_id": 1}).status_code == 403
    assert client.post("/api/search/image", json={"image_id": 1}, headers={"X-Loupe-Request": "1"}).status_code == 200
    # The read session cannot write.
    denied = client.delete("/api/images/1", headers={"X-Loupe-Request": "1"})
    assert denied.status_code == 403
    client.post("/logout")
    assert client.get("/images/1/file").status_code == 401


def test_a_forged_session_cookie_is_refused(shared):
    settings, _, _ = shared
    client = make_app(ServiceSettings(settings, api_token=TOKEN, read_token=READ_TOKEN)).test_client()
    for value in ("write.", "write.00", "read." + "0" * 64, READ_TOKEN, "write." + TOKEN):
        client.set_cookie("loupe_session", value)
        assert client.get("/api/images/1").status_code == 401, value


def test_deeply_nested_json_is_a_400(shared):
    settings, _, _ = shared
    client = make_app(settings).test_client()
    deep = '{"image_id": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for url in ("/api/search/image", "/api/jobs", "/api/generate"):
        response = client.post(url, data=deep, content_type="application/json")
        assert response.status_code == 400, (url, response.get_json())
        assert set(response.get_json()) == {"error", "message"}


# -- job paths -----------------------------------------------------------------------------------------
def _job_answer(client, path, headers=None):
    response = client.post("/api/jobs", json={"paths": [str(path)]}, headers=headers or {})
    return response.status_code, response.get_json()


def test_job_paths_outside_the_allowed_roots_are_refused_alike(indexed, photos, tmp_path):
    """Every escape gets the same answer, token or not, whether the target exists or not, is
    readable or not: no oracle for the file system outside the roots."""
    allowed = photos / "a"
    (allowed / "escape").symlink_to("/etc", target_is_directory=True)
    (allowed / "passwd.jpg").symlink_to("/etc/passwd")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "unreadable").mkdir(mode=0)
    for settings, headers in ((replace(indexed, allowed_roots=(allowed,)), None),
                              (ServiceSettings(replace(indexed, allowed_roots=(allowed,)), api_token=TOKEN),
                               bearer(TOKEN))):
        client = make_app(settings).test_client()
        answers = {_job_answer(client, path, headers)[1]["message"]: path for path in (
            "/etc", "/etc/passwd", "/no/such/folder", secret, secret / "unreadable", secret / "missing.jpg",
            allowed / ".." / "b", allowed / "escape", allowed / "escape" / "passwd", allowed / "passwd.jpg",
            photos, "/")}
        assert len(answers) == 1, answers  # one message for all
        status, body = _job_answer(client, "/etc", headers)
        assert status == 403 and body["error"] == "path_not_allowed"
    nothing = make_app(indexed).test_client()  # no LOUPE_ALLOWED_ROOTS: no jobs over HTTP at all
    status, body = _job_answer(nothing, allowed)
    assert status == 403 and "LOUPE_ALLOWED_ROOTS" in body["message"]


def test_a_job_inside_the_allowed_roots_runs(indexed, photos, tmp_path, photo_arrays):
    folder = tmp_path / "allowed" / "new"
    folder.mkdir(parents=True)
    Image.fromarray(photo_arrays["moon"][::2, ::2]).save(folder / "moon-small.png")
    client = make_app(replace(indexed, allowed_roots=(tmp_path / "allowed",))).test_client()
    status, body = _job_answer(client, folder)
    assert status == 202
    _wait_for_job(client, body["id"])
    assert client.get(f"/api/jobs/{body['id']}").get_json()["added"] == 1


def _wait_for_job(client, job_id, seconds=60):
    import time

    deadline = time.monotonic() + seconds
    while True:
        job = client.get(f"/api/jobs/{job_id}").get_json()
        if job["state"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_symlinked_files_are_followed_only_into_allowed_roots(env, settings, tmp_path, photo_arrays):
    from helpers import catalog_rows

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(photo_arrays["coins"]).save(outside / "private.png")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(photo_arrays["camera"]).save(root / "sub" / "camera.png")
    (root / "link-inside.png").symlink_to(root / "sub" / "camera.png")
    (root / "link-outside.png").symlink_to(outside / "private.png")

    run_json(["index", str(root), "--no-progress"], env)  # the CLI: the named root bounds the links
    paths = {r.path for r in catalog_rows(settings)}
    assert str(root / "link-inside.png") in paths and str(root / "link-outside.png") not in paths
    assert not any(p.startswith(str(outside)) for p in paths)

    client = make_app(replace(settings, allowed_roots=(root,))).test_client()  # over HTTP: the same rule
    _wait_for_job(client, _job_answer(client, root)[1]["id"])
    assert str(root / "link-outside.png") not in {r.path for r in catalog_rows(settings)}


def test_uploads_and_hidden_files_never_count_as_vanished(tmp_path, tiny_model_config, models_dir, photo_arrays):
    """A root that holds LOUPE_HOME (spelled directly, or through a symlink) or hidden folders:
    indexing it neither catalogues Loupe's own files nor marks the uploads missing, so
    `loupe remove --missing` keeps them."""
    from helpers import catalog_rows
    from indexer.settings import Settings

    root = tmp_path / "everything"
    env = make_env(root, models_dir)  # LOUPE_HOME = everything/home
    write_photo_folder(root / "photos", dict(list(photo_arrays.items())[:2]))
    hidden = root / ".cache" / "kept.png"
    hidden.parent.mkdir()
    Image.fromarray(photo_arrays["moon"]).save(hidden)
    run_json(["index", str(hidden), "--no-progress"], env)  # named explicitly: catalogued
    settings = Settings.from_env(env)
    client = make_app(settings).test_client()
    upload = client.post("/api/images", data={"image": (io.BytesIO(png_bytes()), "up.png")})
    assert upload.status_code == 201
    client.get(f"/images/{upload.get_json()['id']}/thumb")  # a thumbnail JPEG now sits in the home

    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    for spelling in (root, tmp_path / "alias"):
        summary = run_json(["index", str(spelling), "--no-progress"], env)
        assert summary["missing"] == 0, spelling
    rows = catalog_rows(settings)
    assert not any(r.missing_since for r in rows)
    assert not any("/thumbs/" in r.path or r.path.count("/uploads/") > 1 for r in rows)
    assert not any(r.path.startswith(str(tmp_path / "alias" / "home")) for r in rows)
    removed = run_json(["remove", "--missing"], env)
    assert removed["removed"] == 0


# -- cancelling a bulk job -----------------------------------------------------------------------------
def test_a_bulk_job_can_be_cancelled(indexed, tmp_path, photo_arrays, monkeypatch):
    from helpers import assert_index_matches_catalog
    from indexer.jobs import IndexOptions
    from searchapp.indexing_jobs import IndexingJobs

    monkeypatch.setattr(IndexingJobs, "_options", lambda self, calibrate=True: IndexOptions(
        batch_size=2, workers=0, progress=False, calibrate=calibrate))
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(photo_arrays["coffee"][i:, i:]).save(folder / f"c{i:02d}.png")
    client = make_app(ServiceSettings(replace(indexed, allowed_roots=(tmp_path,)), api_token=TOKEN)).test_client()
    started = client.post("/api/jobs", json={"paths": [str(folder)]}, headers=bearer(TOKEN)).get_json()
    assert client.post(f"/api/jobs/{started['id']}/cancel").status_code == 401  # a write: the token
    cancelled = client.post(f"/api/jobs/{started['id']}/cancel", headers=bearer(TOKEN))
    assert cancelled.status_code == 200 and cancelled.get_json()["id"] == started["id"]
    job = _wait_for_job(client, started["id"])
    assert job["state"] == "cancelled" and job["added"] < 40
    assert_index_matches_catalog(indexed)
    again = client.post(f"/api/jobs/{started['id']}/cancel", headers=bearer(TOKEN))
    assert again.status_code == 409 and "not running" in again.get_json()["message"]
    assert client.post("/api/jobs/999999/cancel", headers=bearer(TOKEN)).status_code == 404


# -- the write lock --------------------------------------------------------------------------------------
def test_a_failed_job_start_releases_the_write_lock(indexed, photos, monkeypatch):
    """The model fails to load when a job starts: the next request must not find the server
    locked forever (409) but fail the same way, then work once the model loads."""
    import searchapp.services as services
    from indexer.errors import WeightsUnavailableError

    real = services.load_embedder

    def broken(*args, **kwargs):
        raise WeightsUnavailableError("no weights here")

    monkeypatch.setattr(services, "load_embedder", broken)
    client = make_app(replace(indexed, allowed_roots=(photos,))).test_client()
    for _ in range(2):
        response = client.post("/api/jobs", json={"paths": [str(photos)]})
        assert response.status_code == 503 and response.get_json()["error"] == "weights_unavailable"
    monkeypatch.setattr(services, "load_embedder", real)
    response = client.post("/api/jobs", json={"paths": [str(photos)]})
    assert response.status_code == 202
    _wait_for_job(client, response.get_json()["id"])


# -- reading catalogued files -----------------------------------------------------------------------------
def _id_of(client, path) -> int:
    results = client.get("/api/search?q=x&k=200").get_json()["results"]
    return next(r["id"] for r in results if r["path"] == str(path))


def _get_within(client, url, seconds=10):
    """GET `url` on a thread; fails instead of hanging when the server blocks."""
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.update(response=client.get(url)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert "response" in box, f"{url} hung"
    return box["response"]


def test_a_file_swapped_for_a_symlink_after_indexing_is_not_served(indexed, photos, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 10)
    client = make_app(indexed).test_client()
    victim = next(photos.rglob("coffee-0.*"))
    image_id = _id_of(client, victim)
    assert client.get(f"/images/{image_id}/file").status_code == 200
    victim.unlink()
    victim.symlink_to(secret)
    for url in (f"/images/{image_id}/file", f"/images/{image_id}/thumb"):
        response = client.get(url)
        assert response.status_code == 404 and response.get_json()["error"] == "file_changed", url
        assert b"root:" not in response.data
    assert client.get(f"/api/images/{image_id}").get_json()["missing"] is True  # the row is flagged


def test_a_folder_swapped_for_a_symlink_is_not_followed(indexed, photos, tmp_path):
    """`a/` becomes a link to a look-alike folder outside the roots: the real path gives it away."""
    import shutil

    client = make_app(indexed).test_client()
    victim = next((photos / "a").glob("rocket-0.*"))
    image_id = _id_of(client, victim)
    decoy = tmp_path / "decoy"
    shutil.copytree(photos / "a", decoy, copy_function=shutil.copy2)  # same names, sizes and mtimes
    (photos / "a").rename(tmp_path / "a-moved")
    (photos / "a").symlink_to(decoy, target_is_directory=True)
    response = client.get(f"/images/{image_id}/file")
    assert response.status_code == 404 and response.get_json()["error"] == "file_changed"


def test_a_file_replaced_in_place_is_not_served(indexed, photos):
    client = make_app(indexed).test_client()
    victim = next(photos.rglob("moon-0.*"))
    image_id = _id_of(client, victim)
    victim.write_bytes(png_bytes())
    response = client.get(f"/images/{image_id}/file")
    assert response.status_code == 404 and response.get_json()["error"] == "file_changed"


def test_a_fifo_in_place_of_a_catalogued_file_never_hangs(indexed, photos):
    import os

    client = make_app(indexed).test_client()
    victim = next(photos.rglob("camera-0.*"))
    image_id = _id_of(client, victim)
    victim.unlink()
    os.mkfifo(victim)
    for url in (f"/images/{image_id}/file", f"/images/{image_id}/thumb"):
        response = _get_within(client, url)
        assert response.status_code == 404 and response.get_json()["error"] == "file_changed"


def test_a_fifo_or_device_named_jpg_never_hangs_a_job(env, settings, tmp_path, photo_arrays):
    import os
    import threading

    from helpers import catalog_rows

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(photo_arrays["coins"]).save(folder / "real.png")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    box = {}
    thread = threading.Thread(target=lambda: box.update(summary=run_json(
        ["index", str(folder), "--no-progress"], {**env, "LOUPE_ALLOWED_ROOTS": "/dev"})), daemon=True)
    thread.start()
    thread.join(60)
    assert "summary" in box, "the job hung on a FIFO"
    rows = {r.path: r for r in catalog_rows(settings)}
    assert rows[str(folder / "real.png")].status == "indexed"
    assert rows[str(folder / "pipe.jpg")].status == "failed" and "not a regular file" in rows[str(folder / "pipe.jpg")].error
    assert rows[str(folder / "zero.jpg")].status == "failed"


def test_files_are_private_and_named_by_their_decoded_format(indexed):
    client = make_app(indexed).test_client()
    added = client.post("/api/images", data={"image": (io.BytesIO(png_bytes()), "holiday.jpg")}).get_json()
    assert added["path"].endswith(".jpg")  # the stored name keeps the client's image suffix...
    served = client.get(added["file_url"])
    assert served.status_code == 200 and served.mimetype == "image/png"
    assert served.headers["Content-Disposition"] == f'inline; filename="{added["id"]}.png"'  # ...the download does not
    assert served.headers["Cache-Control"].startswith("private")
    thumb = client.get(added["thumb_url"])
    assert thumb.headers["Cache-Control"].startswith("private") and "immutable" in thumb.headers["Cache-Control"]
    ranged = client.get(added["file_url"], headers={"Range": "bytes=0-7"})
    assert ranged.status_code == 206 and ranged.data == b"\x89PNG\r\n\x1a\n"


def test_a_thumbnail_is_made_once_under_a_burst(indexed, monkeypatch):
    import threading

    import indexer.thumbnails as thumbnails

    calls = []
    real = thumbnails.decode_image

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(thumbnails, "decode_image", counting)
    client = make_app(indexed).test_client()
    barrier = threading.Barrier(8)
    codes = []

    def fetch():
        barrier.wait()
        codes.append(client.get("/images/3/thumb").status_code)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert codes == [200] * 8 and len(calls) == 1


def test_paths_can_be_relative_to_their_indexed_root(shared):
    settings, _, photos = shared
    client = make_app(settings).test_client()
    absolute = client.get("/api/search?q=x&k=200").get_json()["results"]
    relative = client.get("/api/search?q=x&k=200&paths=relative").get_json()["results"]
    assert [r["id"] for r in absolute] == [r["id"] for r in relative]
    for a, r in zip(absolute, relative):
        assert not r["path"].startswith("/") and str(photos / r["path"]) == a["path"]
    image = client.get(f"/api/images/{relative[0]['id']}?paths=relative").get_json()
    assert image["path"] == relative[0]["path"]
    upload = client.post("/api/search/image?paths=relative", json={"image_id": relative[0]["id"]}).get_json()
    assert all(not r["path"].startswith("/") for r in upload["results"])
    assert client.get("/api/search?q=x&paths=nested").status_code == 400


# -- costly requests -------------------------------------------------------------------------------------
class HeldGenerator:
    """A generator that waits until the test lets it go, recording the sources it was given."""

    def __init__(self):
        import threading

        self.release = threading.Event()
        self.sources: list[tuple[int, int]] = []

    def describe(self) -> dict:
        return {"backend": "loupe-ddpm", "model": "held", "resolution": 8, "low_resolution": True, "note": "held"}

    def generate(self, source, request, on_step, cancelled):
        self.sources.append(source.size)
        self.release.wait(60)
        return [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(request.n)]


@pytest.fixture
def held(monkeypatch):
    import searchapp.generation.backends as backends

    generator = HeldGenerator()
    monkeypatch.setattr(backends, "generator_configured", lambda *args: True)
    monkeypatch.setattr(backends, "load_generator", lambda *args: generator)
    yield generator
    generator.release.set()


def big_png(width=3000, height=2000) -> bytes:
    """A large picture that compresses to a small upload (a smooth ramp)."""
    import numpy as np

    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_generation_flood_is_bounded(indexed, held):
    """Twelve large uploads at once: three are queued (sources shrunk first), the rest get 429
    with Retry-After; when the generator is free the queue empties and ended jobs leave memory."""
    import time

    client = make_app(indexed, GENERATE_QUEUE_LIMIT=3).test_client()
    data = big_png()
    answers = [client.post("/api/generate", data={"image": (io.BytesIO(data), "big.png"), "n": "2", "wait": "0"})
               for _ in range(12)]
    accepted = [r for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code == 429]
    assert len(accepted) == 3 and len(refused) == 9
    assert all(int(r.headers["Retry-After"]) >= 1 and r.get_json()["error"] == "too_many_requests" for r in refused)
    jobs = client.application.extensions["loupe"].generations
    assert jobs.pending() == 3
    held.release.set()
    deadline = time.monotonic() + 60
    while jobs.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.pending() == 0  # ended jobs leave memory...
    for response in accepted:  # ...and are answered from disk
        assert client.get(f"/api/jobs/{response.get_json()['id']}").get_json()["state"] == "finished"
    assert held.sources and all(max(size) <= 768 for size in held.sources)


def test_generate_waits_at_most_five_seconds(indexed, held):
    import time

    client = make_app(indexed).test_client()
    started = time.monotonic()
    response = client.post("/api/generate", json={"image_id": 1, "n": 1, "wait": 120})
    assert response.status_code == 202 and time.monotonic() - started < 8
    assert response.headers["Location"].startswith("/api/jobs/gen-")


def test_generate_and_costly_stages_need_the_token(indexed, held):
    client = make_app(ServiceSettings(indexed, api_token=TOKEN)).test_client()
    assert client.post("/api/generate", json={"image_id": 1, "wait": 0}).status_code == 401
    assert client.post("/api/generate", json={"image_id": 1, "wait": 0}, headers=bearer(TOKEN)).status_code == 202
    assert client.post("/api/jobs/gen-0123456789abcdef/cancel").status_code == 401
    for stage in ("outpaint", "pixel-ddim", "embedding"):
        refused = client.post("/api/search/image", json={"image_id": 1, "restore": stage})
        assert refused.status_code == 401, stage
        allowed = client.post("/api/search/image", json={"image_id": 1, "restore": stage}, headers=bearer(TOKEN))
        assert allowed.status_code != 401, stage
    assert client.post("/api/search/image", json={"image_id": 1}).status_code == 200  # auto stays open


def test_generated_pictures_have_a_disk_quota(tmp_path):
    from searchapp.generation.store import GeneratedStore

    store = GeneratedStore(tmp_path, ttl_seconds=3600, quota_bytes=6_000)
    ids = [f"gen-{i:016x}" for i in range(8)]
    for i, job_id in enumerate(ids):
        pictures = [Image.effect_noise((24, 24), 60 + i).convert("RGB") for _ in range(2)]
        store.save_images(job_id, pictures)
        import os
        os.utime(store.folder(job_id), (1_000_000 + i, 1_000_000 + i))  # a clear age order
    usage = store.usage()
    assert sum(size for _, size, _ in usage) <= 6_000
    kept = [folder.name for _, _, folder in usage]
    assert kept == ids[-len(kept):] and ids[-1] in kept  # the oldest went first, the newest stays


def test_the_model_thread_refuses_rather_than_queue_forever():
    import threading
    import time

    from searchapp.capacity import Busy
    from searchapp.services import ModelThread

    model = ModelThread(max_pending=2, deadline=0.2)
    release, ran = threading.Event(), []
    blocker = threading.Thread(target=lambda: model.call(release.wait, 30, deadline=None))
    blocker.start()
    time.sleep(0.1)
    waiting = {}
    late = threading.Thread(target=lambda: waiting.update(result=_capture(lambda: model.call(ran.append, 1))))
    late.start()
    time.sleep(0.05)
    with pytest.raises(Busy):  # two pending: the third is refused at once
        model.call(ran.append, 2)
    late.join(5)
    assert isinstance(waiting["result"], Busy)  # the second waited its deadline, then was dropped
    release.set()
    blocker.join(5)
    assert model.call(ran.append, 3) is None and ran == [3]  # the dropped call never ran


def _capture(fn):
    try:
        return fn()
    except Exception as err:
        return err


def test_a_busy_model_answers_503_with_retry_after(indexed):
    import threading

    client = make_app(indexed, MODEL_QUEUE_LIMIT=1, MODEL_DEADLINE_SECONDS=0.3).test_client()
    assert client.get("/api/search?q=x").status_code == 200  # the model is loaded
    service = client.application.extensions["loupe"]
    release = threading.Event()
    blocker = threading.Thread(target=lambda: service.model_thread.call(release.wait, 30, deadline=None))
    blocker.start()
    try:
        response = client.get("/api/search?q=cat")
        assert response.status_code == 503 and response.get_json()["error"] == "busy"
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        release.set()
        blocker.join(5)
    assert client.get("/api/search?q=cat").status_code == 200


# -- decode memory ---------------------------------------------------------------------------------------
MEASURE = """
import json, resource, sys
from indexer.images import DecodeLimits, decode_cost, decode_image
from PIL import Image
data = open(sys.argv[1], "rb").read()
with Image.open(sys.argv[1]) as probe:
    mode, (w, h) = probe.mode, probe.size
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
decode_image(data, DecodeLimits(max_pixels=50_000_000))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"mode": mode, "pixels": w * h, "growth": after - before, "cost": decode_cost(mode, w, h)}))
"""


def _bomb(path, mode, side):
    import numpy as np

    if mode == "I;16":  # a 16-bit greyscale ramp: 32 MB of pixels in a few kilobytes
        ramp = (np.arange(side, dtype=np.uint32) * 16 % 65536).astype(np.uint16)
        Image.fromarray(np.broadcast_to(ramp, (side, side)).copy()).save(path, "PNG")
    elif mode == "F":
        ramp = np.linspace(0, 1, side, dtype=np.float32)
        Image.fromarray(np.broadcast_to(ramp, (side, side)).copy(), mode="F").save(path, "TIFF",
                                                                                  compression="tiff_deflate")
    else:
        Image.new(mode, (side, side), (10, 20, 30, 128)).save(path, "PNG")
    return path


@pytest.mark.parametrize("mode", ["I;16", "F", "RGBA"])
def test_a_decode_bomb_stays_within_its_memory_estimate(tmp_path, mode):
    """A 16 MP 16-bit greyscale (or float, or transparent) picture: the decode's peak memory,
    measured in a fresh process, stays within `decode_cost` (the float64 conversion it replaced
    took 34 bytes a pixel for 16-bit greyscale, 36 for float, 20 for RGBA)."""
    import json
    import subprocess
    import sys

    path = _bomb(tmp_path / "bomb", mode, 4000)
    assert path.stat().st_size < 20_000_000
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin"})
    found = json.loads(out.stdout)
    assert found["mode"].startswith(mode[:1])
    assert found["growth"] <= found["cost"] + 16 * 2**20, found
    assert found["cost"] <= 10 * found["pixels"]  # within the default budget of 10 bytes a pixel


def test_an_upload_over_the_decode_budget_is_refused_before_decoding(indexed, tmp_path):
    client = make_app(indexed, MAX_UPLOAD_DECODE_BYTES=50 * 2**20).test_client()
    data = _bomb(tmp_path / "bomb.png", "I;16", 3000).read_bytes()  # 9 MP: about 66 MB to decode
    response = client.post("/api/search/image", data={"image": (io.BytesIO(data), "bomb.png")})
    assert response.status_code == 400 and "budget" in response.get_json()["message"]


def test_decodes_wait_for_a_slot_and_busy_is_503(indexed, monkeypatch):
    import searchapp.services as services
    from indexer.images import DEFAULT_DECODE_SLOTS, decode_slots, set_decode_slots

    monkeypatch.setattr(services, "DECODE_WAIT_SECONDS", 0.2)
    client = make_app(indexed, MAX_CONCURRENT_DECODES=1).test_client()
    slot = decode_slots().semaphore
    assert slot.acquire(timeout=5)  # another decode holds the only slot
    try:
        response = client.post("/api/search/image", data={"image": (io.BytesIO(png_bytes()), "x.png")})
        assert response.status_code == 503 and response.get_json()["error"] == "busy"
        assert response.headers["Retry-After"] == "5"
    finally:
        slot.release()
    try:
        assert client.post("/api/search/image", data={"image": (io.BytesIO(png_bytes()), "x.png")}).status_code == 200
    finally:
        set_decode_slots(DEFAULT_DECODE_SLOTS)


# -- the rest --------------------------------------------------------------------------------------------
def test_deep_image_search_pages_never_500(shared):
    """offset 10000 with regions: tens of thousands of region ids are looked up, in chunks that
    every database accepts."""
    settings, _, photos = shared
    client = make_app(settings).test_client()
    data = next(photos.rglob("coffee-0.*")).read_bytes()
    response = client.post("/api/search/image?k=200&offset=10000", data={"image": (io.BytesIO(data), "q.png")})
    assert response.status_code == 200 and response.get_json()["results"] == []
    response = client.post("/api/search/image", json={"image_id": 1, "k": 200, "offset": 10000})
    assert response.status_code == 200
    library = client.application.extensions["loupe"].library
    assert library._region_owners(list(range(1, 70_000))) and library._region_count(set(range(1, 70_000))) > 0


def test_uploads_are_written_once_fsynced_and_removed_with_their_image(indexed, monkeypatch):
    import os
    import threading

    import indexer.uploads as uploads

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(uploads.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    client = make_app(indexed).test_client()
    data = png_bytes((9, 99, 199), (40, 30))
    barrier = threading.Barrier(6)
    answers = []

    def add():
        barrier.wait()
        answers.append(client.post("/api/images", data={"image": (io.BytesIO(data), "same.png")}))

    threads = [threading.Thread(target=add) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.status_code for r in answers] == [201] * 6
    assert len({r.get_json()["id"] for r in answers}) == 1
    folder = indexed.home / "uploads"
    assert [p.name for p in folder.iterdir()] == [answers[0].get_json()["path"].rsplit("/", 1)[1]]  # no temp left
    assert len(synced) >= 2  # the file and its folder
    deleted = client.delete(f"/api/images/{answers[0].get_json()['id']}")
    assert deleted.status_code == 200 and list(folder.iterdir()) == []


@pytest.mark.postgres
def test_two_hosts_sharing_a_postgres_catalog_exclude_each_other(tmp_path, tiny_model_config, models_dir,
                                                                 postgres_url, photo_arrays):
    """Two data folders (two hosts) on one PostgreSQL catalog: while one writes, the other's
    writer is refused with a clear message, and gets in once the first is done."""
    from indexer.factory import open_library
    from indexer.errors import JobLockedError
    from indexer.settings import Settings

    first = {**make_env(tmp_path / "host-a", models_dir), "LOUPE_DATABASE_URL": postgres_url}
    second = {**make_env(tmp_path / "host-b", models_dir), "LOUPE_DATABASE_URL": postgres_url}
    assert run_cli(["db", "upgrade"], first)[0] == 0
    folder = write_photo_folder(tmp_path / "photos", dict(list(photo_arrays.items())[:2]))
    library = open_library(Settings.from_env(first))
    try:
        with library.writer():
            code, _, err = run_cli(["index", str(folder), "--no-progress"], second)
            assert code == 1 and "another Loupe host" in err
        assert run_cli(["index", str(folder), "--no-progress"], second)[0] == 0
    finally:
        library.close()
    with pytest.raises(JobLockedError):  # and the other way round
        other = open_library(Settings.from_env(second))
        try:
            with other.writer(), library.writer():
                pass
        finally:
            other.close()
