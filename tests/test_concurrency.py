"""Concurrency: searches keep being answered while the index grows and is swapped, and
concurrent adds and removes through the API keep catalog and index consistent (PostgreSQL)."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from helpers import assert_index_matches_catalog, loupe_argv, run_cli
from indexer.settings import Settings
from searchapp import create_app
from searchapp.settings import ServiceSettings

pytestmark = pytest.mark.slow


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_searches_answered_during_a_bulk_job_and_an_index_swap(env, photos, settings, photo_arrays, tmp_path,
                                                                tiny_model_config, index_photos):
    from dataclasses import replace

    index_photos(env, photos)
    # Jobs over HTTP may index only inside LOUPE_ALLOWED_ROOTS: here, the test's folder.
    service = ServiceSettings(replace(settings, allowed_roots=(tmp_path,)))
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": service}).test_client()
    assert client.get("/api/search?q=warm").status_code == 200
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    rng = np.random.default_rng(1)
    arrays = list(photo_arrays.values())
    bulk_count, later_count = 60, 10
    for i in range(bulk_count):
        pixels = arrays[i % len(arrays)][::3, ::3]
        noisy = np.clip(pixels.astype(int) + rng.integers(-30, 30, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(bulk / f"b{i:03d}.jpg")
    later = tmp_path / "later"
    later.mkdir()
    for i in range(later_count):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(later / f"l{i}.png")

    stop = threading.Event()
    seen: list[tuple[int, int]] = []  # (status, total)
    errors: list[str] = []

    def searcher(i: int) -> None:
        while not stop.is_set():
            response = client.get(f"/api/search?q=query+{i}&k=5")
            body = response.get_json()
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {body}")
                continue
            seen.append((response.status_code, body["total"]))
            stop.wait(0.02)  # a busy site, not a flood: the other process must get the CPU to start

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        job = client.post("/api/jobs", json={"paths": [str(bulk)]}).get_json()
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{job['id']}").get_json()["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get(f"/api/jobs/{job['id']}").get_json()["state"] == "finished"
        # Another process adds pictures and saves the index: the server swaps it in.
        other = subprocess.run(loupe_argv(tiny_model_config, "index", later, "--no-progress"),
                               env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert other.returncode == 0, other.stderr
        deadline = time.monotonic() + 30
        while (not seen or seen[-1][1] < 24 + bulk_count + later_count) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    totals = [total for _, total in seen]
    everything = 24 + bulk_count + later_count
    assert len(totals) > 20
    assert min(totals) >= 24, "a search saw a half-loaded index"
    assert any(24 < t < 24 + bulk_count for t in totals), "no search was answered while the job was adding pictures"
    assert max(totals) == everything
    assert_index_matches_catalog(settings)


@pytest.mark.postgres
def test_concurrent_adds_and_removes_on_postgres(env, postgres_url):
    pg_env = {**env, "LOUPE_DATABASE_URL": postgres_url}
    assert run_cli(["db", "upgrade"], pg_env)[0] == 0
    settings = Settings.from_env(pg_env)
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(settings)}).test_client()
    kept: list[int] = []
    lock = threading.Lock()

    def worker(w: int) -> list[str]:
        problems = []
        for i in range(12):
            data = _png(1000 * w + i)
            response = client.post("/api/images", data={"image": (io.BytesIO(data), f"w{w}-{i}.png")},
                                   content_type="multipart/form-data")
            if response.status_code != 201:
                problems.append(f"add {response.status_code} {response.get_json()}")
                continue
            image_id = response.get_json()["id"]
            if i % 3 == 0:
                deleted = client.delete(f"/api/images/{image_id}")
                if deleted.status_code != 200:
                    problems.append(f"delete {deleted.status_code} {deleted.get_json()}")
            else:
                with lock:
                    kept.append(image_id)
        return problems

    with ThreadPoolExecutor(4) as pool:
        problems = [p for result in pool.map(worker, range(4)) for p in result]
    assert not problems, problems[:3]
    assert len(kept) == 32
    indexed = assert_index_matches_catalog(settings)
    assert indexed == set(kept)
    for image_id in kept[:8]:
        hit = client.post("/api/search/image", json={"image_id": image_id, "k": 1})
        assert hit.status_code == 200
    upload = client.post("/api/search/image?k=1", data={"image": (io.BytesIO(_png(1001)), "q.png")},
                         content_type="multipart/form-data").get_json()
    assert upload["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_searches_continue_while_the_index_is_rebuilt_as_another_type(env, photos, monkeypatch, index_photos):
    """A library that outgrows the exact index is rebuilt as IVF (images and regions) while
    other threads search it: the new index is built aside and swapped in whole. Each search's
    start and end are recorded, so the test shows searches answered during the rebuild."""
    import indexer.mirror as mirror_module
    from indexer.library import Library
    from indexer.query import SearchQuery
    from indexer.vectorstore import VectorStore, choose_index_spec

    index_photos(env, photos)
    library = Library.open(Settings.from_env(env))
    queries = [library.vector_of(i) for i in sorted(library.store.ids().tolist())[:6]]
    assert library.store.spec.factory == "Flat"
    monkeypatch.setattr(mirror_module, "choose_index_spec", lambda n, d, **kw: choose_index_spec(n, d, exact_limit=20, **kw))
    builds: list[tuple[float, float]] = []
    real_build = VectorStore.build

    def slow_build(*args, **kwargs):  # a rebuild long enough to search through, as a big library's is
        started = time.perf_counter()
        store = real_build(*args, **kwargs)
        time.sleep(0.3)
        builds.append((started, time.perf_counter()))
        return store

    monkeypatch.setattr(VectorStore, "build", staticmethod(slow_build))
    stop = threading.Event()
    answered, errors = [], []  # (results, started, ended)

    def searcher(i: int) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                page = library.search(queries[i % len(queries)], SearchQuery(k=5, regions=True))
                answered.append((len(page.results), started, time.perf_counter()))
            except Exception as err:  # any failure mid-swap is the bug this test looks for
                errors.append(repr(err))

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        library.sync_store()
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert answered and {n for n, _, _ in answered} == {5}
    assert len(builds) == 2  # images and regions
    for built_from, built_to in builds:
        during = [a for a in answered if built_from < a[1] and a[2] < built_to]
        assert during, "no search was answered while an index was being rebuilt"
    assert library.store.spec.factory.startswith("IVF") and library.regions.store.spec.factory.startswith("IVF")
    library.close()
