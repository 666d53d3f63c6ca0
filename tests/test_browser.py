"""The web UI in a real browser: Debian's Chromium driven by Playwright against the real
server (waitress) on loopback."""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest

from helpers import gradient_png
from searchapp.settings import ServiceSettings

CHROMIUM = os.environ.get("LOUPE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is not installed at {CHROMIUM}")
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def server(env, photos, settings, tmp_path, index_photos):
    """`loupe serve`'s WSGI server (waitress) on an ephemeral loopback port (jobs over HTTP may
    index the test's folder)."""
    from dataclasses import replace

    from waitress.server import create_server

    from searchapp import create_app

    index_photos(env, photos)
    # auto's CUDA default (pixel denoising of noisy queries), so that the page's reconstruction
    # can be tested on a CPU, whose default runs no stage.
    service = ServiceSettings.from_env(env, core=replace(settings, allowed_roots=(tmp_path,)))
    app = create_app({"LOUPE_SETTINGS": replace(service, restore=replace(service.restore, auto=(("noise", ("pixel",)),)))})
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
    thread.join(timeout=5)


def save_screenshot(page, tmp_path, name: str):
    """A screenshot once the first thumbnails have loaded, also copied to $LOUPE_ARTIFACTS."""
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#results img')).slice(0, 4).every(i => i.complete && i.naturalWidth > 0)"
    )
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    artifacts = os.environ.get("LOUPE_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(shot, os.path.join(artifacts, name))
    return shot


@pytest.fixture
def page(browser, server, tmp_path):
    # bypass_csp lets wait_for_function evaluate its predicates; the CSP itself is tested in test_api.
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server)
    yield page
    context.close()
    assert not errors, errors


def test_type_a_query_and_see_results(page, tmp_path):
    page.fill("#q", "a cat sitting")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").count() == 24
    assert "best match first" in page.inner_text("#state")
    assert "q=a+cat+sitting" in page.url
    page.wait_for_function("Array.from(document.querySelectorAll('#results img')).slice(0, 8).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "text-search.png"), full_page=False)


def test_upload_a_photo_and_see_its_original_first(page, photos, tmp_path):
    original = next(photos.rglob("rocket-0.*"))
    page.set_input_files("#file", str(original))
    page.wait_for_selector("#results .card")
    first = page.locator("#results .card").first
    assert first.locator(".name").inner_text() == original.name
    assert float(first.locator(".score").inner_text()) > 0.999
    assert page.is_visible("#query") and original.name in page.inner_text("#query-title")
    shot = save_screenshot(page, tmp_path, "photo-search.png")
    assert shot.stat().st_size > 10_000


def test_crop_shows_its_region_outlined_and_a_copy_found(page, photos, tmp_path):
    from PIL import Image

    from indexer.regions import region_boxes

    original = next(photos.rglob("rocket-0.*"))
    with Image.open(original) as img:
        picture = img.convert("RGB")
    box = region_boxes(picture.width, picture.height)[-1]
    crop = tmp_path / "crop.png"
    picture.crop((box.x, box.y, box.x + box.w, box.y + box.h)).save(crop)
    page.set_input_files("#file", str(crop))
    page.wait_for_selector("#results .card")
    first = page.locator("#results .card").first
    assert first.locator(".name").inner_text() == original.name
    # Verified: the outline drawn is the verified quadrilateral (here the region itself), which
    # replaces the region's square.
    outline = first.locator(".outline polygon")
    assert outline.count() == 1 and first.locator(".region").count() == 0
    frame = first.locator(".fit").bounding_box()
    drawn = outline.bounding_box()
    # The outline sits where the region is in the picture (to within a pixel or two of rounding).
    assert abs((drawn["x"] - frame["x"]) / frame["width"] - box.x / picture.width) < 0.02
    assert abs(drawn["width"] / frame["width"] - box.w / picture.width) < 0.02
    assert "is in the collection" in page.inner_text("#verdict")
    save_screenshot(page, tmp_path, "region-match.png")


def test_exact_copy_badge_and_no_copy_message(page, photos, tmp_path):
    original = next(photos.rglob("coffee-0.*"))
    page.set_input_files("#file", str(original))
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").first.locator(".badge").inner_text() == "Exact copy"
    unlike = tmp_path / "ramp.png"
    unlike.write_bytes(gradient_png())
    page.click("#clear-query")
    page.set_input_files("#file", str(unlike))
    page.wait_for_function("document.querySelector('#verdict').textContent.includes('no copy')")
    assert page.is_visible("#verdict")
    assert page.locator("#results .card .badge").count() == 0


def test_drop_a_photo(page, photos):
    original = next(photos.rglob("moon-0.*"))
    data = list(original.read_bytes())
    page.evaluate(
        """([bytes, name]) => {
            const file = new File([new Uint8Array(bytes)], name, {type: name.endsWith('.png') ? 'image/png' : 'image/jpeg'});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            window.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [data, original.name],
    )
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card .name").first.inner_text() == original.name


def test_click_a_result_then_more_like_this(page, tmp_path):
    page.fill("#q", "coffee")
    page.wait_for_selector("#results .card")
    chosen = page.locator("#results .card").nth(2)
    chosen_name = chosen.locator(".name").inner_text()
    chosen.click()
    page.wait_for_selector("#detail[open]")
    page.wait_for_function("document.getElementById('detail-title').textContent.length > 0 && document.getElementById('detail-title').textContent !== 'Loading…'")
    assert page.inner_text("#detail-title") == chosen_name
    assert "Path" in page.inner_text("#detail-meta")
    page.wait_for_function("document.getElementById('detail-image').complete && document.getElementById('detail-image').naturalWidth > 0")
    page.screenshot(path=str(tmp_path / "detail.png"))
    page.click("#more-like-this")
    page.wait_for_selector("#detail", state="hidden")
    page.wait_for_function(f"document.getElementById('query-title').textContent.includes({chosen_name!r})")
    page.wait_for_selector("#results .card")
    names = page.locator("#results .card .name").all_inner_texts()
    assert chosen_name not in names and len(names) == 23


def test_keyboard_only_search_and_detail(page):
    page.keyboard.type("rocket")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .card")
    page.focus("#results .card >> nth=0")
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")


def test_untrained_banner_shows(page):
    assert page.is_visible("#untrained-banner")
    assert "not semantic" in page.inner_text("#untrained-banner") or "Untrained" in page.inner_text("#untrained-banner")


def test_error_state_is_readable(page):
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not really a png"}])
    page.wait_for_selector("#state.error")
    assert "not a supported image" in page.inner_text("#state")


# -- generate similar ---------------------------------------------------------------------------------


def _open_first_result(page, text="coffee"):
    page.fill("#q", text)
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .card")
    page.locator("#results .card").first.click()
    page.wait_for_selector("#detail[open]")
    page.wait_for_function("document.getElementById('detail-title').textContent !== 'Loading…'")


def test_generate_similar_is_not_offered_without_a_generator(page, photos):
    _open_first_result(page)
    assert page.is_hidden("#generate-similar")
    page.click("#detail-close")
    page.set_input_files("#file", str(next(photos.rglob("rocket-0.*"))))
    page.wait_for_selector("#results .card")
    assert page.is_visible("#clear-query") and page.is_hidden("#generate-from-query")


def train_tiny_generator(settings):
    """A tiny generator trained for a few steps on the indexed photographs (a server loads it
    with its first generation job)."""
    from indexer.factory import open_library
    from searchapp.diffusion.training import TrainOptions, load_pictures, train
    from searchapp.diffusion.unet import UNetConfig

    library = open_library(settings)
    paths = library.indexed_paths()
    library.close()
    config = UNetConfig(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    train(settings.home / "generator", load_pictures(paths, 16, 50), config,
          TrainOptions(budget_seconds=3600, max_steps=8, batch_size=4, progress=False))


@pytest.fixture
def generator(settings, page):
    """The page, reloaded once a tiny generator is trained (it offers "Generate similar" then)."""
    train_tiny_generator(settings)
    page.reload()
    return page


def _wait_for_variations(page, count):
    page.wait_for_function(f"document.querySelectorAll('#gen-grid .variation').length === {count}", timeout=60_000)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#gen-grid img')).every(i => i.complete && i.naturalWidth > 0)")


def test_generate_similar_from_a_result_and_from_an_upload(generator, photos, tmp_path):
    page = generator
    _open_first_result(page)
    page.click("#generate-similar")
    _wait_for_variations(page, 4)
    assert page.locator("#gen-grid .variation").first.locator(".neighbour").count() == 6
    assert "16x16 pixels — low resolution" in page.inner_text("#gen-backend")
    assert "not added to the collection" in page.inner_text("#gen-status")
    assert page.is_hidden("#gen-cancel") and page.is_hidden("#gen-progress")
    save_generation = tmp_path / "generate-similar.png"
    page.screenshot(path=str(save_generation))
    artifacts = os.environ.get("LOUPE_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(save_generation, os.path.join(artifacts, save_generation.name))

    neighbour = page.locator("#gen-grid .neighbour").first
    neighbour_id = neighbour.get_attribute("data-id")
    neighbour.click()  # a generated picture's nearest real picture opens in the detail view
    page.wait_for_selector("#detail[open]")
    page.wait_for_function(f"document.getElementById('detail-meta').textContent.includes('{neighbour_id}')")
    page.click("#detail-close")

    page.set_input_files("#file", str(next(photos.rglob("rocket-0.*"))))
    page.wait_for_selector("#generate-from-query:not([hidden])")
    page.click("#generate-from-query")
    page.wait_for_function("document.getElementById('gen-title').textContent.includes('rocket-0')")
    _wait_for_variations(page, 4)
    page.click("#gen-close")
    assert page.is_hidden("#generation")


def test_generation_shows_progress_and_can_be_cancelled(generator):
    page = generator

    def slower(route):  # many steps and pictures, so the job is still running when Cancel is pressed
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "n": 8, "steps": 200, "strength": 1.0}))

    page.route("**/api/generate", slower)
    _open_first_result(page)
    page.click("#generate-similar")
    page.wait_for_function("document.getElementById('gen-status').textContent.startsWith('Generating')")
    assert page.is_visible("#gen-progress")
    page.click("#gen-cancel")
    page.wait_for_function("document.getElementById('gen-status').textContent === 'Cancelled.'", timeout=60_000)
    assert page.locator("#gen-grid .variation").count() == 0 and page.is_hidden("#gen-cancel")


@pytest.fixture
def restorer(page, settings):
    """The page, once a pixel restorer has trained for a moment on the indexed photographs
    (the server loads it with the first query that needs it)."""
    from indexer.factory import open_library
    from searchapp.restoration.pixel import OWN_FOLDER
    from searchapp.restoration.training import PixelTraining, train_pixel_restorer

    library = open_library(settings)
    try:
        train_pixel_restorer(library, settings.home / OWN_FOLDER,
                             PixelTraining(budget_seconds=3600, max_steps=8, input_size=32, progress=False), "cpu")
    finally:
        library.close()
    return page


def test_a_noisy_upload_shows_what_was_detected_and_its_reconstruction(restorer, photos, tmp_path):
    import numpy as np
    from PIL import Image

    page = restorer
    original = next(photos.rglob("rocket-0.*"))
    small = np.asarray(Image.open(original).convert("RGB").resize((32, 32)), dtype=np.float64)
    noisy = np.clip(small + np.random.default_rng(0).normal(0, 70, small.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    page.set_input_files("#file", str(tmp_path / "noisy.png"))
    page.wait_for_selector("#reconstruction:not([hidden])")
    text = page.inner_text("#restoration")
    assert text.startswith("Detected noise") and "diffusion denoising" in text
    page.wait_for_function("document.getElementById('reconstruction-image').naturalWidth === 32")
    page.wait_for_selector("#results .card")
    save_screenshot(page, tmp_path, "restored-search.png")

    page.set_input_files("#file", str(original))
    page.wait_for_function("document.getElementById('restoration').textContent.startsWith('No damage detected')")
    assert page.is_hidden("#reconstruction")


# -- a server that needs a token -------------------------------------------------------------------------


@pytest.fixture
def guarded_server(env, photos, settings, index_photos):
    """`loupe serve` with a read token and an API token: the page asks for one first."""
    from waitress.server import create_server

    from searchapp import create_app

    index_photos(env, photos)
    guarded = ServiceSettings(settings, api_token="browser-write-token", read_token="browser-read-token")
    server = create_server(create_app({"LOUPE_SETTINGS": guarded}), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
    thread.join(timeout=5)


def test_sign_in_with_the_read_token_then_search(browser, guarded_server, photos):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(guarded_server)
        assert page.url.endswith("/login")
        page.fill("#token", "not-the-token")
        page.click("#login-form button")
        page.wait_for_selector("#login-error")
        page.fill("#token", "browser-read-token")
        page.click("#login-form button")
        page.wait_for_selector("#q")
        assert "read only" in page.inner_text("#access")
        page.fill("#q", "a rocket")
        page.wait_for_selector("#results .card")
        # Thumbnails are image tags: the session cookie carries the read right.
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#results img')).slice(0, 4).every(i => i.complete && i.naturalWidth > 0)")
        page.locator("#results .card").first.click()
        page.wait_for_function("document.getElementById('detail-image').complete && "
                               "document.getElementById('detail-image').naturalWidth > 0")
        assert page.is_hidden("#generate-similar")  # a read-only session is not offered what needs the token
        page.click("#detail-close")
        original = next(photos.rglob("rocket-0.*"))  # a POST: the cookie plus the page's own header
        page.set_input_files("#file", str(original))
        page.wait_for_function(f"document.querySelector('#results .card .name')?.textContent === {original.name!r}")
        page.click("#access button")  # sign out
        page.wait_for_url("**/login")
    finally:
        context.close()
    assert not errors, errors


def test_a_running_indexing_job_can_be_cancelled_from_the_page(browser, server, settings, tmp_path, photo_arrays,
                                                               monkeypatch):
    """A bulk job started over the API shows on the page, with its progress and a Cancel button."""
    import time
    import urllib.request

    from PIL import Image

    from indexer.writer import BatchWriter

    real = BatchWriter.write

    def slow(self, *args, **kwargs):  # a slow disk: each batch takes a while
        time.sleep(0.3)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BatchWriter, "write", slow)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(64):
        Image.fromarray(photo_arrays["coffee"][i:, i:]).save(folder / f"c{i:02d}.png")
    request = urllib.request.Request(f"{server}/api/jobs", data=json.dumps({"paths": [str(folder)]}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    job = json.loads(urllib.request.urlopen(request).read())
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    page = context.new_page()
    try:
        page.goto(server)
        page.wait_for_selector("#index-job-cancel")
        assert f"#{job['id']}" in page.inner_text("#index-job")
        page.click("#index-job-cancel")
        page.wait_for_function("document.getElementById('index-job-status').textContent.includes('cancelled')",
                               timeout=60_000)
        assert page.is_hidden("#index-job-cancel")
    finally:
        context.close()


def test_a_verified_crop_shows_its_outline_verdict_and_compare_view(page, photos, tmp_path):
    from PIL import Image

    original = next(photos.rglob("chelsea-0.*"))
    with Image.open(original) as img:
        picture = img.convert("RGB")
    w, h = picture.size
    box = (w // 5, h // 6, w // 5 + int(w * 0.63), h // 6 + int(h * 0.63))  # 40 % of the area
    crop = tmp_path / "crop.png"
    picture.crop(box).save(crop)
    page.set_input_files("#file", str(crop))
    page.wait_for_selector("#results .card")
    verdict = page.inner_text("#verdict")
    assert "This picture is in the collection." in verdict and "of this photo" in verdict and "verified" in verdict
    card = page.locator("#results .card", has=page.locator(".name", has_text=original.name))
    polygon = card.locator(".outline polygon")
    assert polygon.count() == 1 and card.locator(".badge").inner_text() == "Near-duplicate"
    assert "Your picture is 40 % of this photo" in card.locator(".verified").inner_text()
    frame, drawn = card.locator(".fit").bounding_box(), polygon.bounding_box()
    # The outline sits where the crop is in the photo (to within a few pixels of the thumbnail).
    assert abs((drawn["x"] - frame["x"]) / frame["width"] - box[0] / w) < 0.02
    assert abs(drawn["width"] / frame["width"] - (box[2] - box[0]) / w) < 0.02
    assert abs((drawn["y"] - frame["y"]) / frame["height"] - box[1] / h) < 0.02
    save_screenshot(page, tmp_path, "verified-crop.png")

    card.click()
    page.wait_for_selector("#compare:not([hidden])")
    assert page.is_hidden("#detail-image")
    assert "Your picture is 40 % of this photo" in page.inner_text("#compare-summary")
    assert page.locator("#compare-match polygon").count() == 1
    assert page.eval_on_selector("#compare-match polygon", "e => getComputedStyle(e).fill") != "rgb(0, 0, 0)"
    assert page.eval_on_selector("#compare-match .warped", "e => getComputedStyle(e).opacity") == "0"
    page.check("#compare-overlay")
    page.wait_for_function("getComputedStyle(document.querySelector('#compare-match .warped')).opacity > 0.5")
    # The warped query covers the outline: its on-screen box is the polygon's.
    warped = page.locator("#compare-match .warped").bounding_box()
    outline = page.locator("#compare-match polygon").bounding_box()
    assert abs(warped["x"] - outline["x"]) < 4 and abs(warped["width"] - outline["width"]) < 5  # the stroke: 3 px
    page.screenshot(path=str(tmp_path / "compare.png"))


def test_a_photo_and_words_search_together(page, photos):
    """A photo, then words: one combined search (similar pictures, no copy verdict); emptying the
    words searches the photo alone again (#18)."""
    original = next(photos.rglob("rocket-0.*"))
    page.set_input_files("#file", str(original))
    page.wait_for_selector("#verdict.found")
    assert page.is_visible("#words-hint")
    with page.expect_response(lambda r: "/api/search/image" in r.url) as answered:
        page.fill("#q", "at night -people")
    assert answered.value.json()["combined"]["terms"] == [{"text": "at night", "weight": 1.0},
                                                          {"text": "people", "weight": -1.0}]
    page.wait_for_selector("#terms:not([hidden])")
    assert page.inner_text("#terms") == "Searching for: this photo · at night · not people"
    page.wait_for_selector("#results .card")
    assert page.is_hidden("#verdict") and page.is_visible("#query")
    assert page.locator("#results .card").count() == 24 and page.locator("#results .badge").count() == 0
    assert "at night" in page.inner_text("#query-meta")
    page.fill("#q", "")
    page.wait_for_selector("#verdict.found")
    assert page.is_hidden("#terms")


def test_duplicates_page_quarantine_and_restore(page, server, photos, tmp_path):
    page.click("#duplicates-link")
    page.wait_for_selector(".dups-group")
    assert page.locator(".dups-group").count() >= 6  # 8 photographs with their crops (a few crops missed)
    first = page.locator(".dups-group").first
    assert first.locator(".dups-pic.keep").count() == 1
    paths = [p.inner_text() for p in first.locator(".dups-pic:not(.keep) .path").all()]
    first.locator("button.quarantine").click()
    page.wait_for_selector(".dups-group.done button.restore")
    assert "to the quarantine" in page.inner_text("#dups-status")
    page.wait_for_selector("#dups-quarantine li")
    assert not any(os.path.exists(p) for p in paths)
    page.wait_for_function("Array.from(document.querySelectorAll('.dups-pic img')).slice(0, 4).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "duplicates.png"))
    first.locator("button.restore").click()
    page.wait_for_function("document.getElementById('dups-status').textContent.startsWith('Restored')"
                           " || document.querySelectorAll('#dups-quarantine li').length === 0")
    page.wait_for_function("document.getElementById('dups-quarantine').hidden")
    assert all(os.path.exists(p) for p in paths)


# -- behind a reverse proxy, and for web users (#22) -------------------------------------------------------


@pytest.fixture
def prefixed_server(env, photos, settings, index_photos):
    """`loupe serve` with LOUPE_URL_PREFIX=/photos, as behind a proxy that passes /photos/… on;
    the photographs indexed include a 1800 px TIFF (browsers do not show TIFF)."""
    from dataclasses import replace

    from PIL import Image
    from waitress.server import create_server

    from searchapp import create_app

    with Image.open(next(photos.rglob("astronaut-0.*"))) as img:
        img.convert("RGB").resize((1800, 1800)).save(photos / "big.tif")
    index_photos(env, photos)
    service = replace(ServiceSettings.from_env(env, core=settings), url_prefix="/photos")
    server = create_server(create_app({"LOUPE_SETTINGS": service}), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}/photos/"
    server.close()
    thread.join(timeout=5)


def _open_card(page, name):
    page.locator("#results .card", has=page.locator(".name", has_text=name)).click()
    page.wait_for_selector("#detail[open]")
    page.wait_for_function(f"document.getElementById('detail-title').textContent === {name!r}")


def test_under_a_sub_path_with_a_missing_file_and_a_tiff(browser, prefixed_server, photos):
    """Every request stays under the prefix; a picture whose file is gone shows a placeholder;
    the detail view shows the bounded preview (of a TIFF original too), the original is a link."""
    gone = next(photos.rglob("coins-0.*"))
    gone.unlink()
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    page = context.new_page()
    errors, outside = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda r: outside.append(r.url)
            if r.url.startswith("http") and not r.url.startswith(prefixed_server) else None)
    try:
        page.goto(prefixed_server)
        page.fill("#q", "coins on a table")
        page.wait_for_selector("#results .card")
        page.evaluate("document.getElementById('more-button').click()")  # all 25 pictures
        page.wait_for_function("document.querySelectorAll('#results .card').length === 25")
        page.wait_for_function("Array.from(document.querySelectorAll('#results img')).every("
                               "i => i.complete && i.naturalWidth > 0)")
        missing = page.locator("#results img.missing")
        assert missing.count() == 1 and missing.get_attribute("alt") == gone.name
        assert missing.evaluate("i => i.src.endsWith('/photos/static/missing.svg')")

        _open_card(page, gone.name)
        page.wait_for_function("document.getElementById('detail-image').classList.contains('missing')")
        page.click("#detail-close")

        _open_card(page, "big.tif")
        page.wait_for_function("document.getElementById('detail-image').complete && "
                               "document.getElementById('detail-image').naturalWidth === 1600")
        assert not page.eval_on_selector("#detail-image", "i => i.classList.contains('missing')")
        src = page.get_attribute("#detail-image", "src")
        assert src.startswith("/photos/images/") and src.endswith("/preview")
        assert page.get_attribute("#open-original", "href").endswith("/file")
        page.click("#detail-close")

        original = next(photos.rglob("rocket-0.*"))  # an upload search (a POST) under the prefix too
        page.set_input_files("#file", str(original))
        page.wait_for_function(f"document.querySelector('#results .card .name')?.textContent === {original.name!r}")
    finally:
        context.close()
    assert not errors, errors
    assert not outside, outside


def test_a_signed_in_writer_adds_a_generated_picture(browser, guarded_server, settings):
    """With tokens set, a session signed in with the API token may add a generated picture."""
    train_tiny_generator(settings)
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(guarded_server)
        page.fill("#token", "browser-write-token")
        page.click("#login-form button")
        page.wait_for_selector("#q")
        _open_first_result(page)
        page.click("#generate-similar")
        _wait_for_variations(page, 4)
        add = page.locator("#gen-grid .add-generated").first
        add.click()
        page.wait_for_function("document.querySelector('#gen-grid .add-generated').textContent.startsWith('Added (id')")
    finally:
        context.close()
    assert not errors, errors


@pytest.fixture
def more_photos(photos):
    """8 more pictures (seeded noise) in photos/c, so that a search has a second page."""
    import numpy as np
    from PIL import Image

    folder = photos / "c"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"noise-{i}.png")
    return photos


def test_filter_chips_folder_picker_sort_and_infinite_scroll(more_photos, page, settings):
    """#18: the folder picker lists the indexed folders, choosing one adds a chip and filters
    the results; the sort menu reorders; scrolling loads the next page with the cursor."""
    from pathlib import Path

    from sqlalchemy import select, update

    from indexer.catalog import ImageRecord
    from indexer.database import open_database

    sessions = open_database(settings)  # the metadata columns, until the indexer records them
    with sessions.begin() as session:
        for row in session.execute(select(ImageRecord.id, ImageRecord.path)).all():
            session.execute(update(ImageRecord).where(ImageRecord.id == row.id).values(folder=str(Path(row.path).parent)))
    sessions.kw["bind"].dispose()
    cursors = []
    page.on("request", lambda r: cursors.append("cursor=" in r.url) if "/api/search" in r.url else None)

    page.fill("#q", "a photograph")
    page.wait_for_selector("#results .card")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # the next page loads as it comes into view
    page.wait_for_function("document.querySelectorAll('#results .card').length === 32")
    assert any(cursors)  # the second page was asked for with the first page's cursor
    ids = page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")
    assert len(set(ids)) == 32

    page.click("#folder-button")
    page.wait_for_function("document.querySelectorAll('#folder-list .folder-choice').length === 3")
    page.fill("#folder-q", "nested")
    page.wait_for_function("document.querySelectorAll('#folder-list .folder-choice').length === 1")
    page.click("#folder-list .folder-choice")
    page.wait_for_function("document.querySelectorAll('#results .card').length === 12")
    assert "in " in page.inner_text("#chips") and "nested" in page.inner_text("#chips")
    assert "Showing 12 of 12" in page.inner_text("#state")

    page.select_option("#sort", "size")
    page.wait_for_function("document.querySelector('#state').textContent.includes('largest first')")
    page.click("#chips .chip-remove")
    page.wait_for_function("document.querySelectorAll('#results .card').length === 24")
    assert page.locator("#chips .chip").count() == 0
