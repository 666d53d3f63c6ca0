"""What the page needs from the server (#22), through Flask's test client: serving under a
sub-path (LOUPE_URL_PREFIX, or a WSGI mount), bounded previews (TIFF too), what a DELETE
leaves behind, the guides the page links to, and no command-line hints on the page."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from conftest import make_env, write_photos
from helpers import check_schema, run_json
from searchapp import create_app
from searchapp.settings import ServiceSettings, parse_url_prefix

TIFF_SIZE = (2400, 1800)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """A home with 4 photographs and one large TIFF indexed (module-wide: indexing is the slow part)."""
    folder = tmp_path_factory.mktemp("web-ui")
    env = make_env(folder, models_dir)
    photos = folder / "photos"
    write_photos(photos, dict(list(photo_arrays.items())[:4]))
    Image.fromarray(photo_arrays["coins"]).convert("RGB").resize(TIFF_SIZE).save(photos / "large.tif")
    run_json(["index", str(photos), "--no-progress"], env)
    return env


def make_app(env, **changes):
    from dataclasses import replace

    return create_app({"TESTING": True, "LOUPE_SETTINGS": replace(ServiceSettings.from_env(env), **changes)})


def ids_by_name(client, prefix=""):
    body = client.get(f"{prefix}/api/search?q=a+photo&k=50").get_json()
    return {r["path"].rsplit("/", 1)[-1]: r for r in body["results"]}


def test_a_url_prefix_puts_every_url_under_it(library):
    app = make_app(library, url_prefix="/photos")
    # URLs built outside a request (a generation's pictures) carry the prefix too.
    assert app.extensions["loupe"].urls.generated("gen-0123456789abcdef", "0.png").startswith("/photos/generated/")
    client = app.test_client()
    page = client.get("/photos/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'data-root="/photos/"' in html
    assert 'href="/photos/static/style.css"' in html and 'src="/photos/static/app.js"' in html
    # No URL on the page escapes the prefix (the app's own paths all go through url_for).
    assert not re.findall(r'(?:href|src|action)="/(?!photos/)', html)
    check_schema(client.get("/photos/api/search?q=a+photo"), "/api/search")
    results = ids_by_name(client, "/photos")
    assert results and all(r["thumb_url"].startswith("/photos/images/") for r in results.values())
    result = next(iter(results.values()))
    assert client.get(result["thumb_url"]).status_code == 200
    assert client.get(result["preview_url"]).mimetype == "image/jpeg"
    assert client.get("/photos/static/missing.svg").status_code == 200
    # Without the prefix (a health check on the loopback port) it answers as usual.
    assert client.get("/api/health").status_code == 200


def test_a_wsgi_mount_under_a_prefix_works_without_the_setting(library):
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    app = make_app(library)
    mounted = DispatcherMiddleware(Response("not here", status=404), {"/loupe": app.wsgi_app})
    client = Client(mounted)
    html = client.get("/loupe/").get_data(as_text=True)
    assert 'data-root="/loupe/"' in html and 'href="/loupe/static/style.css"' in html
    body = client.get("/loupe/api/search?q=cat").get_json()
    assert body["results"][0]["thumb_url"].startswith("/loupe/images/")
    assert client.get(body["results"][0]["thumb_url"]).status_code == 200


@pytest.mark.parametrize("value, expected", [("", None), ("/", None), ("/photos/", "/photos"), ("/a/b-c", "/a/b-c")])
def test_url_prefix_values(value, expected):
    assert parse_url_prefix(value) == expected


@pytest.mark.parametrize("value", ["photos", "/a//b", "/../x", "/a b", "/a?x=1"])
def test_bad_url_prefix_is_refused_by_name(value):
    from indexer.errors import ConfigError

    with pytest.raises(ConfigError, match="LOUPE_URL_PREFIX"):
        parse_url_prefix(value)


def test_preview_is_a_bounded_jpeg_cached_and_a_tiff_renders(library):
    client = make_app(library).test_client()
    large = ids_by_name(client)["large.tif"]
    assert client.get(large["file_url"]).mimetype == "image/tiff"
    preview = client.get(large["preview_url"])
    assert preview.status_code == 200 and preview.mimetype == "image/jpeg"
    assert preview.headers["Cache-Control"].startswith("private")
    with Image.open(io.BytesIO(preview.data)) as img:
        assert img.format == "JPEG" and max(img.size) == 1600 and img.size == (1600, 1200)
    cached = list((library_home(library) / "previews").rglob(f"{large['id']}-*.jpg"))
    assert len(cached) == 1
    metadata = check_schema(client.get(f"/api/images/{large['id']}"), "/api/images/{image_id}")
    assert metadata["preview_url"] == large["preview_url"]
    assert client.get("/images/999999/preview").status_code == 404


def library_home(env):
    from pathlib import Path

    return Path(env["LOUPE_HOME"])


def test_delete_removes_an_uploads_bytes_thumbnail_and_preview(library):
    """What the trust-and-safety guide promises: after DELETE, nothing of the upload stays."""
    client = make_app(library).test_client()
    buf = io.BytesIO()
    Image.effect_mandelbrot((300, 200), (-2, -1, 1, 1), 60).convert("RGB").save(buf, "PNG")
    home = library_home(library)
    checked = client.post("/api/search/image?k=3&restore=off", data={"image": (io.BytesIO(buf.getvalue()), "q.png")})
    assert checked.status_code == 200 and checked.get_json()["copy_found"] is False
    assert not (home / "uploads").exists() or not list((home / "uploads").iterdir())  # a search keeps nothing
    added = client.post("/api/images", data={"image": (io.BytesIO(buf.getvalue()), "probe.png")}).get_json()
    stored = [p for p in (home / "uploads").iterdir() if p.suffix == ".png"]
    assert len(stored) == 1 and stored[0].read_bytes() == buf.getvalue()
    assert client.get(added["thumb_url"]).status_code == 200 and client.get(added["preview_url"]).status_code == 200
    assert list(home.glob(f"thumbs/*/{added['id']}.jpg")) and list(home.glob(f"previews/*/{added['id']}-*.jpg"))
    assert client.delete(f"/api/images/{added['id']}").get_json() == {"removed": added["id"]}
    assert not stored[0].exists()
    assert not list(home.glob(f"thumbs/*/{added['id']}.jpg")) and not list(home.glob(f"previews/*/{added['id']}-*.jpg"))
    assert client.get(f"/api/images/{added['id']}").status_code == 404


def test_the_page_links_to_the_guides_instead_of_command_lines(library, tmp_path, models_dir):
    client = make_app(library).test_client()
    html = client.get("/").get_data(as_text=True)
    assert 'href="/docs/operations.md"' in html and 'href="/docs/models.md"' in html  # untrained banner
    assert 'data-can-generate="false"' in html  # no generator trained: not offered
    assert re.search(r'id="generate-similar"[^>]*hidden', html)
    empty = make_app(make_env(tmp_path, models_dir)).test_client().get("/").get_data(as_text=True)
    assert "Nothing is indexed yet" in empty
    for page in (html, empty):
        text = re.sub(r"<[^>]+>", " ", page)
        assert "loupe " not in text.replace("Loupe ", "") and "LOUPE_" not in text and "--" not in text
    guide = client.get("/docs/operations.md")
    assert guide.status_code == 200 and guide.mimetype == "text/plain" and b"systemd" in guide.data
    for name in ("nope.md", "..%2Fpyproject.toml", "operations", "README.md"):
        assert client.get(f"/docs/{name}").status_code == 404


def test_the_guides_need_what_the_page_needs(library):
    client = make_app(library, read_token="read-secret").test_client()
    assert client.get("/docs/operations.md").status_code == 401
    assert client.get("/docs/operations.md", headers={"Authorization": "Bearer read-secret"}).status_code == 200
