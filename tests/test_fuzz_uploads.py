"""Fuzzing the upload endpoints with malformed and hostile images (hypothesis, derandomised).

Every input must get an answer in bounded time that is either a success or a JSON 4xx naming
the problem: never a 5xx, never a hang, and memory must stay bounded. Every hostile and valid
base input is sent unmutated first; then mutated inputs, as many as LOUPE_FUZZ_SEARCH /
LOUPE_FUZZ_ADD say (defaults: 1,500 and 300; 9,000 and 1,000 with LOUPE_TEST_FULL=1).
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st

from helpers import assert_index_matches_catalog, current_rss_mb, full_run
from hostile_images import hostile_images, mutate, valid_images
from searchapp import create_app
from searchapp.settings import ServiceSettings

pytestmark = pytest.mark.slow

SEARCH_EXAMPLES = int(os.environ.get("LOUPE_FUZZ_SEARCH", "9000" if full_run() else "1500"))
ADD_EXAMPLES = int(os.environ.get("LOUPE_FUZZ_ADD", "1000" if full_run() else "300"))
MAX_SECONDS_PER_REQUEST = 5.0
MAX_RSS_GROWTH_MB = 600

VALID = valid_images()
HOSTILE = hostile_images()
BASES = sorted({**VALID, **HOSTILE}.items())
NAMES = ["photo.jpg", "photo.png", "x.gif", "../../etc/passwd", "a.svg", "index.html", "", "ü.webp", "a" * 300]
CONTENT_TYPES = ["image/jpeg", "image/png", "text/html", "image/svg+xml", "application/octet-stream", "application/pdf"]


def upload_case():
    return st.tuples(
        st.integers(0, len(BASES) - 1),  # which base input
        st.integers(0, 3),  # how many mutations
        st.integers(0, 2**32 - 1),  # mutation seed
        st.sampled_from(NAMES),
        st.sampled_from(CONTENT_TYPES),
        st.sampled_from(["image", "image", "image", "file", "images[]"]),  # field name trickery
    )


def build(case) -> tuple[bytes, dict]:
    base, mutations, seed, name, ctype, field = case
    rng = np.random.default_rng(seed)
    data = BASES[base][1]
    for _ in range(mutations):
        data = mutate(data, rng)
    return data, {field: (io.BytesIO(data), name, ctype)}


@pytest.fixture
def fuzz_client(env, photos, settings, index_photos):
    index_photos(env, photos)
    app = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(settings),
                      "MAX_CONTENT_LENGTH": 2 * 1024 * 1024, "MAX_UPLOAD_PIXELS": 4_000_000})
    return app.test_client()


def check(response, elapsed: float, statuses: Counter) -> None:
    statuses[response.status_code] += 1
    assert response.status_code < 500, response.get_data(as_text=True)
    assert elapsed < MAX_SECONDS_PER_REQUEST
    body = response.get_json()
    assert body is not None, "every answer is JSON"
    if response.status_code >= 400:
        assert body["error"] and body["message"]
    assert response.mimetype == "application/json"


def test_fuzz_image_search(fuzz_client):
    statuses: Counter = Counter()
    start_rss = current_rss_mb()
    for name, data in BASES:  # every base input once, unmutated
        t0 = time.perf_counter()
        response = fuzz_client.post("/api/search/image", data={"image": (io.BytesIO(data), name)},
                                    content_type="multipart/form-data")
        check(response, time.perf_counter() - t0, statuses)
        if name in VALID:
            assert response.status_code == 200, (name, response.get_json())
        else:
            assert response.status_code in (400, 413), (name, response.get_json())

    @fuzz_settings(max_examples=SEARCH_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(upload_case())
    def fuzz(case):
        data, form = build(case)
        t0 = time.perf_counter()
        response = fuzz_client.post("/api/search/image?k=5", data=form, content_type="multipart/form-data")
        check(response, time.perf_counter() - t0, statuses)

    fuzz()
    total = sum(statuses.values())
    print(f"\nfuzzed image search: {total} requests, statuses {dict(sorted(statuses.items()))}, "
          f"RSS now {current_rss_mb():.0f} MB (+{current_rss_mb() - start_rss:.0f})")
    assert total >= SEARCH_EXAMPLES
    assert current_rss_mb() - start_rss < MAX_RSS_GROWTH_MB


def test_fuzz_add_image(fuzz_client, settings):  # noqa: F811 (the Loupe settings fixture)
    statuses: Counter = Counter()

    @fuzz_settings(max_examples=ADD_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(upload_case())
    def fuzz(case):
        data, form = build(case)
        t0 = time.perf_counter()
        response = fuzz_client.post("/api/images", data=form, content_type="multipart/form-data")
        check(response, time.perf_counter() - t0, statuses)
        if response.status_code == 201:
            assert response.get_json()["status"] == "indexed"

    fuzz()
    print(f"\nfuzzed image add: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert statuses[201] > 0 and sum(statuses.values()) >= ADD_EXAMPLES
    assert_index_matches_catalog(settings)  # nothing half-added
