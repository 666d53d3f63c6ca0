"""The collection's kNN graph (indexer.graph), diffusion re-ranking (indexer.diffusion_rank) and
their place in searches, jobs and removals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import make_env, write_photo_folder
from helpers import run_cli, run_json
from indexer.diffusion_rank import DiffusionParams, diffusion_order
from indexer.graph import KnnGraph, build_graph, flat_searcher, update_graph


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, vectors: np.ndarray, k: int) -> dict[int, set[int]]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return {int(ids[i]): set(ids[np.argsort(-sims[i])[:k]].tolist()) for i in range(len(ids))}


def neighbour_sets(graph: KnnGraph) -> dict[int, set[int]]:
    return {int(i): set(int(j) for j in row if j >= 0) for i, row in zip(graph.ids, graph.neighbours)}


def test_build_matches_brute_force_knn():
    ids = np.arange(300, dtype=np.int64)[::-1] * 3 + 7  # any ids, in any order
    vectors = unit_rows(300)
    graph = build_graph(ids, vectors, k=10)
    assert list(graph.ids) == sorted(ids.tolist()) and graph.neighbours.shape == (300, 10)
    assert neighbour_sets(graph) == brute_force(ids, vectors, 10)
    assert np.all(np.diff(graph.sims, axis=1) <= 1e-6)  # best first
    tiny = build_graph(np.array([1, 2, 3]), unit_rows(3), k=10)  # fewer pictures than k
    assert neighbour_sets(tiny) == {1: {2, 3}, 2: {1, 3}, 3: {1, 2}}


def test_incremental_update_equals_rebuild(tmp_path):
    vectors = unit_rows(600, seed=1)
    ids = np.arange(1, 601, dtype=np.int64)
    graph = build_graph(ids[:540], vectors[:540], k=10)
    removed = ids[:30]
    kept = np.setdiff1d(ids, removed)
    lookup = dict(zip(ids.tolist(), vectors))

    def vectors_of(wanted):
        return np.stack([lookup[int(i)] for i in wanted]) if len(wanted) else np.zeros((0, 16), np.float32)

    searcher = flat_searcher(vectors_of(kept), kept)
    # Removal alone is exact.
    only_removed = update_graph(graph, flat_searcher(vectors_of(ids[30:540]), ids[30:540]), vectors_of,
                                np.zeros(0, np.int64), np.zeros((0, 16)), removed)
    assert neighbour_sets(only_removed) == brute_force(ids[30:540], vectors[30:540], 10)
    # Additions and removals: within 1% of the rebuilt graph's edges (measured: all of them here).
    updated = update_graph(graph, searcher, vectors_of, ids[540:], vectors[540:], removed)
    rebuilt = build_graph(kept, vectors_of(kept), k=10)
    assert list(updated.ids) == list(rebuilt.ids)
    a, b = neighbour_sets(updated), neighbour_sets(rebuilt)
    agree = sum(len(a[i] & b[i]) for i in b) / sum(len(b[i]) for i in b)
    assert agree >= 0.99
    updated.save(tmp_path / "graph.npz")
    loaded = KnnGraph.load(tmp_path / "graph.npz")
    assert np.array_equal(loaded.neighbours, updated.neighbours) and loaded.k == 10


def chain_graph() -> KnnGraph:
    """Pictures 1-2-3-4 along a chain (a manifold), 5 connected only to 6 (far from the query)."""
    edges = {1: [(2, 0.9)], 2: [(1, 0.9), (3, 0.9)], 3: [(2, 0.9), (4, 0.9)], 4: [(3, 0.9)],
             5: [(6, 0.9)], 6: [(5, 0.9)]}
    ids = np.array(sorted(edges), np.int64)
    neighbours = np.full((len(ids), 2), -1, np.int64)
    sims = np.zeros((len(ids), 2), np.float32)
    for row, i in enumerate(ids):
        for col, (j, s) in enumerate(edges[int(i)]):
            neighbours[row, col], sims[row, col] = j, s
    return KnnGraph(ids, neighbours, sims, 2)


def test_diffusion_ranks_a_manifold_neighbour_above_a_direct_but_disconnected_one():
    graph = chain_graph()
    ids = np.array([1, 2, 5, 3, 4])  # direct order: 5 (disconnected from the query's) beats 3 and 4
    direct = np.array([0.9, 0.6, 0.55, 0.5, 0.45])
    params = DiffusionParams(seeds=1, fusion=0.7, alpha=0.9, keep_first=False)
    order = ids[diffusion_order(graph, ids, direct, params=params)]
    assert list(order).index(3) < list(order).index(5) and list(order).index(4) < list(order).index(5)
    off = ids[diffusion_order(graph, ids, direct, params=replace(params, fusion=0.0))]
    assert list(off) == list(ids)  # no diffusion weight: the direct order


def test_copies_stay_first():
    graph = chain_graph()
    ids = np.array([5, 6, 1, 2, 3])  # 5 and 6 are copies of the query (score >= cut-off)
    direct = np.array([0.99, 0.97, 0.7, 0.6, 0.5])
    order = ids[diffusion_order(graph, ids, direct, pin_score=0.95, params=DiffusionParams(seeds=3, fusion=1.0))]
    assert list(order[:2]) == [5, 6]
    # Below the cut-off, the direct best result still stays first (keep_first).
    ids, direct = np.array([5, 1, 2, 3]), np.array([0.8, 0.7, 0.6, 0.5])
    order = ids[diffusion_order(graph, ids, direct, pin_score=0.95, params=DiffusionParams(seeds=3, fusion=1.0))]
    assert order[0] == 5


# -- in the library, the jobs, the API and the CLI -------------------------------------------------
@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """24 real photographs (8 and two crops of each), indexed once for the module."""
    folder = tmp_path_factory.mktemp("graph")
    env = make_env(folder, models_dir)
    photos = write_photo_folder(folder / "photos", photo_arrays)
    run_json(["index", str(photos), "--no-progress"], env)
    return env, photos


@pytest.fixture(scope="module")
def library(collection):
    from indexer.factory import open_library
    from indexer.settings import Settings

    library = open_library(Settings.from_env(collection[0]))
    yield library
    library.close()


def test_jobs_build_the_graph_and_removal_reconciles_it(collection, library, tmp_path):
    env, photos = collection
    graph = library.graph.graph
    assert graph is not None and set(graph.ids.tolist()) == set(library.store.ids().tolist())
    vectors = library.stored_vectors_of(graph.ids.tolist())
    k = min(graph.k, len(graph) - 1)
    assert neighbour_sets(graph) == brute_force(graph.ids, vectors, k)
    # A removal (CLI) drops the picture from the graph and from every row that held it.
    gone = int(graph.ids[0])
    code, _, err = run_cli(["remove", f"id:{gone}"], env)
    assert code == 0, err
    after = library.graph.graph  # reloaded: another process saved it
    assert gone not in set(after.ids.tolist()) and not np.isin(after.neighbours, [gone]).any()
    assert set(after.ids.tolist()) == set(library.store.ids().tolist()) or library.refresh()
    # The next job puts it back (re-indexed), and the graph follows.
    run_json(["index", str(photos), "--no-progress"], env)
    library.refresh()
    assert set(library.graph.graph.ids.tolist()) == set(library.store.ids().tolist())


def test_found_by_diffusion(library):
    from indexer.query import SearchQuery

    ids = np.sort(library.store.ids())
    vector = library.stored_vectors_of([int(ids[0])])
    direct = library.search(vector, SearchQuery(k=len(ids)))
    top, last = direct.results[0].id, direct.results[-1].id
    # A graph where the least similar picture is the top one's only neighbour: diffusion lifts it.
    neighbours = np.full((len(ids), 1), -1, np.int64)
    sims = np.zeros((len(ids), 1), np.float32)
    for a, b in ((top, last), (last, top)):
        row = int(np.searchsorted(ids, a))
        neighbours[row, 0], sims[row, 0] = b, 1.0
    saved = library.graph._graph, library.graph._seen, library.diffusion
    library.graph._graph, library.graph._seen = KnnGraph(ids, neighbours, sims, 1), library.graph._stat()
    library.diffusion = DiffusionParams(seeds=1, fusion=0.9, power=1.0)
    try:
        page = library.search(vector, SearchQuery(k=3, rerank="diffusion"))
    finally:
        library.graph._graph, library.graph._seen, library.diffusion = saved
    assert [r.id for r in page.results][:2] == [top, last]
    assert page.results[1].found_by == "diffusion" and page.results[0].found_by is None
    assert page.results[1].as_dict()["found_by"] == "diffusion"
    assert library.search(vector, SearchQuery(k=3)).results[1].found_by is None


def test_rerank_parameter_in_api_and_cli(collection):
    from indexer.settings import Settings
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    env, photos = collection
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(Settings.from_env(env))}).test_client()
    plain = client.get("/api/search?q=a+cat&k=5").get_json()
    diffused = client.get("/api/search?q=a+cat&k=5&rerank=diffusion")
    assert diffused.status_code == 200 and len(diffused.get_json()["results"]) == 5
    assert {r["id"] for r in plain["results"]} <= {r["id"] for r in client.get(
        "/api/search?q=a+cat&k=200&rerank=diffusion").get_json()["results"]}
    bad = client.get("/api/search?q=a+cat&rerank=sideways")
    assert bad.status_code == 400 and bad.get_json()["error"] == "bad_parameter" and "rerank" in bad.get_json()["message"]
    image = client.post("/api/search/image?rerank=diffusion", json={"image_id": plain["results"][0]["id"]})
    assert image.status_code == 200 and image.get_json()["results"]
    upload = (photos / "a").glob("*-1.*").__next__().read_bytes()
    import io

    found = client.post("/api/search/image?rerank=diffusion&restore=off",
                        data={"image": (io.BytesIO(upload), "q.jpg")}).get_json()
    assert found["results"][0]["match"] in ("exact", "near-duplicate")  # the copy stays first
    out = run_json(["search", "a cat", "-k", "4", "--rerank", "diffusion"], env)
    assert len(out["results"]) == 4
    with pytest.raises(SystemExit) as refused:  # argparse: a one-line usage error, exit status 2
        run_cli(["search", "a cat", "--rerank", "sideways"], env)
    assert refused.value.code == 2


# -- the map ---------------------------------------------------------------------------------------
def test_map_api_shape_caps_and_cluster_search(collection, library):
    from indexer.collection_map import load_map
    from indexer.settings import Settings
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    from helpers import check_schema

    env, _ = collection
    found = load_map(library)
    assert found is not None and set(found.ids.tolist()) == set(library.store.ids().tolist())
    assert not found.semantic and found.clusters[0].label == "Cluster 1"  # untrained weights: numbered
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(Settings.from_env(env))}).test_client()
    body = check_schema(client.get("/api/map"), "/api/map")
    assert len(body["points"]) == body["total"] == len(found) and not body["truncated"]
    assert {tuple(sorted(p)) for p in body["points"]} == {("cluster", "id", "x", "y")}
    assert all(0.0 <= p["x"] <= 1.0 and 0.0 <= p["y"] <= 1.0 for p in body["points"])
    assert sum(c["size"] for c in body["clusters"]) == body["total"]
    assert all(1 <= len(c["representatives"]) <= 4 and {"id", "label", "size"} <= set(c) for c in body["clusters"])
    capped = client.get("/api/map?limit=3").get_json()
    assert len(capped["points"]) == 3 and capped["truncated"] and capped["total"] == len(found)
    for bad in ("limit=0", "limit=20001", "cluster=-1", "cluster=x"):
        refused = client.get(f"/api/map?{bad}")
        assert refused.status_code == 400 and refused.get_json()["error"] == "bad_parameter", bad
    assert client.get("/api/map?cluster=63").status_code == 404
    biggest = body["clusters"][0]
    inside = client.get(f"/api/map?cluster={biggest['id']}").get_json()
    members = {p["id"] for p in inside["points"]}
    assert len(members) == biggest["size"] and all(p["cluster"] == biggest["id"] for p in inside["points"])
    found_in = client.get(f"/api/search?q=a+photo&k=50&cluster={biggest['id']}").get_json()["results"]
    assert {r["id"] for r in found_in} == members
    assert client.get("/api/search?q=a+photo&cluster=63").status_code == 404
    # A cluster is a filter: counted, paged by cursor (bound to it), with other filters and in
    # more-like-this.
    first = client.get(f"/api/search?q=a+photo&k=2&cluster={biggest['id']}").get_json()
    assert first["total"] == biggest["size"] > 2 and first["next"]
    after = client.get(f"/api/search?q=a+photo&k=2&cluster={biggest['id']}&cursor={first['next']}").get_json()
    paged = [r["id"] for r in first["results"] + after["results"]]
    assert len(set(paged)) == 4 and set(paged) <= members
    other = body["clusters"][1]["id"]
    assert client.get(f"/api/search?q=a+photo&k=2&cluster={other}&cursor={first['next']}").status_code == 400
    assert client.get(f"/api/search?q=a+photo&cluster={biggest['id']}&format=nothing").get_json()["total"] == 0
    seed = min(members)
    alike = client.post(f"/api/search/image?cluster={biggest['id']}", json={"image_id": seed, "k": 50}).get_json()
    assert {r["id"] for r in alike["results"]} == members - {seed}
    assert client.get("/map").status_code == 200 and b"map.js" in client.get("/map").data


@pytest.mark.slow
def test_map_page_in_a_browser(collection, tmp_path):
    """The map in Chromium: clusters listed and outlined, thumbnails drawn, a cluster chosen and
    searched inside, a picture opened by a click. Saves map.png (and to $LOUPE_ARTIFACTS)."""
    import os
    import shutil
    import threading

    from test_browser import CHROMIUM, CHROMIUM_ARGS

    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright
    from waitress.server import create_server

    from indexer.settings import Settings
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    env, _ = collection
    app = create_app({"LOUPE_SETTINGS": ServiceSettings(Settings.from_env(env))})
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.effective_port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(viewport={"width": 1200, "height": 760}, bypass_csp=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(base + "/")
            page.click("#map-link")
            page.wait_for_selector("body[data-map-ready='true']")
            clusters = page.locator("#cluster-list button")
            assert clusters.count() >= 2 and "Cluster 1" in clusters.first.inner_text()
            assert page.get_attribute("#map-canvas", "data-mode") == "thumbnails"  # 24 pictures: all shown
            page.wait_for_timeout(1500)  # thumbnails arrive and are drawn
            shot = tmp_path / "map.png"
            page.screenshot(path=str(shot))
            for folder in filter(None, (os.environ.get("LOUPE_ARTIFACTS"), os.environ.get("LOUPE_MAP_SCREENSHOT_DIR"))):
                os.makedirs(folder, exist_ok=True)
                shutil.copy(shot, os.path.join(folder, "map.png"))
            clusters.first.click()
            page.wait_for_selector("#cluster-detail:not([hidden]) #cluster-reps img")
            page.fill("#cluster-q", "a photo")
            page.click("#cluster-search button")
            page.wait_for_selector("#cluster-results a")
            page.mouse.wheel(0, 400)  # zoom (24 pictures: thumbnails at every zoom; dots from a few hundred on)
            page.click("#zoom-reset")
            x, y, picture = page.get_attribute("#map-canvas", "data-first").split(",")
            box = page.locator("#map-canvas").bounding_box()
            page.mouse.click(box["x"] + float(x), box["y"] + float(y))  # chooses the picture's cluster
            with context.expect_page() as opened:
                x, y, picture = page.get_attribute("#map-canvas", "data-first").split(",")
                page.mouse.click(box["x"] + float(x), box["y"] + float(y))  # opens a picture
            opened.value.wait_for_load_state()
            assert "/file" in opened.value.url
            assert not errors, errors
            browser.close()
    finally:
        server.close()
        thread.join(timeout=5)
