"""Filters, sort orders and cursor pagination (#18): the parsing, the metadata table, FAISS
searches restricted to a selection (against exact filtered search), and every search of the
API and the CLI with them. One library is indexed for the module; the metadata columns are
set directly on its rows (the indexer fills them once metadata recording lands)."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import make_env, write_photo_folder
from helpers import check_schema, run_cli, run_json
from indexer.filters import QueryError, check_names, parse_filter, parse_when
from indexer.metatable import MetadataTable
from indexer.query import SearchQuery

T0 = datetime(2023, 7, 1, 12, 0, tzinfo=timezone.utc)
CAMERAS = (("Apple", "iPhone 12"), ("Canon", "EOS 5D Mark IV"), (None, None))


# -- parsing ---------------------------------------------------------------------------------------
def test_dates_are_inclusive_and_read_as_utc_without_an_offset():
    assert parse_when("taken_after", "2023-07-14", end=False) == datetime(2023, 7, 14, tzinfo=timezone.utc)
    assert parse_when("taken_before", "2023-07-14", end=True) == datetime(2023, 7, 14, 23, 59, 59, 999999,
                                                                          tzinfo=timezone.utc)
    assert parse_when("taken_before", "2023-12", end=True).date().isoformat() == "2023-12-31"
    assert parse_when("taken_after", "2023", end=False) == datetime(2023, 1, 1, tzinfo=timezone.utc)
    assert parse_when("taken_after", "2023-07-14T20:00:00+02:00", end=False) == datetime(2023, 7, 14, 18,
                                                                                         tzinfo=timezone.utc)
    assert parse_when("taken_after", "2023-07-14t18:00:60z", end=False).second == 59  # RFC 3339: t, z, leap
    assert parse_when("taken_before", "9999", end=True).year == 9999  # the last instant Python holds
    assert parse_when("taken_before", "0001-01-01T00:00:00+05:00", end=True).year == 1


@pytest.mark.parametrize("values, param", [
    ({"taken_after": ["yesterday"]}, "taken_after"),
    ({"taken_before": ["2023-13-01"]}, "taken_before"),
    ({"min_width": ["wide"]}, "min_width"),
    ({"min_height": ["1.5"]}, "min_height"),
    ({"min_width": ["0"]}, "min_width"),
    ({"folder": ["photos/2023"]}, "folder"),
    ({"format": ["jp eg"]}, "format"),
])
def test_bad_filter_values_name_their_parameter(values, param):
    with pytest.raises(QueryError) as err:
        parse_filter(values)
    assert err.value.param == param and param in str(err.value)
    assert isinstance(err.value, ValueError)


def test_filter_values_are_normalised():
    wanted = parse_filter({"folder": ["/photos/2023/", "/photos/2023"], "format": ["jpg,PNG", "heic"],
                           "camera": [" iPhone  12 "], "min_width": ["640"], "min_height": [480]})
    assert wanted.folders == ("/photos/2023",)
    assert wanted.formats == ("JPEG", "PNG", "HEIF")
    assert wanted.cameras == ("iphone 12",) and (wanted.min_width, wanted.min_height) == (640, 480)
    assert not parse_filter({}).active and wanted.active
    assert not parse_filter({"camera": ["  "]}).active  # a blank camera filters nothing


def test_unknown_filter_like_names_are_refused_and_others_left_alone():
    known = ("q", "k", "min_score", "folder", "taken_after")
    for name in ("taken_afer", "max_width", "fromat", "min_area"):
        with pytest.raises(QueryError) as err:
            check_names([name], known)
        assert err.value.param == name
    check_names(["q", "min_score", "rerank", "text"], known)  # other features' parameters pass


def test_a_bad_sort_names_sort():
    with pytest.raises(QueryError) as err:
        SearchQuery(sort="newest")
    assert err.value.param == "sort"


# -- the metadata table ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table() -> MetadataTable:
    rows = [
        (5, "/p/a", T0, "JPEG", 4000, 3000, "Apple", "iPhone 12", 3_000_000),
        (2, "/p/a/b", T0 + timedelta(days=40), "png", 800, 600, "Canon", "EOS 5D", 900_000),
        (9, "/p/ab", None, "HEIF", 4000, 3000, "Apple", "iPhone 15 Pro", 2_000_000),
        (7, "/q", T0 - timedelta(days=400), "JPEG", 640, 480, None, None, 100_000),
    ]
    return MetadataTable.from_rows(rows)


def test_table_filters_by_each_column(table):
    def ids(**values):
        return table.select(parse_filter({k: [v] if not isinstance(v, list) else v for k, v in values.items()})).tolist()

    assert table.ids.tolist() == [2, 5, 7, 9]
    assert ids(folder="/p/a") == [2, 5]  # whole components: /p/ab is not below /p/a
    assert ids(folder=["/p/ab", "/q"]) == [7, 9]
    assert ids(folder="/") == [2, 5, 7, 9]
    assert ids(format="jpg") == [5, 7] and ids(format="heic") == [9] and ids(format="gif") == []
    assert ids(camera="IPHONE") == [5, 9] and ids(camera="apple iphone 15") == [9] and ids(camera="canon") == [2]
    assert ids(min_width=1000) == [5, 9] and ids(min_height=500) == [2, 5, 9]
    assert ids(taken_after="2023-07-01") == [2, 5]  # no date taken: left out
    assert ids(taken_before="2023-07-01") == [5, 7]  # a date bound includes its whole day
    assert ids(taken_after="2023-07-02", taken_before="2023-08") == [2]
    assert ids(folder="/p", camera="apple", min_width=1000, format="jpeg") == [5]
    assert ids(taken_after="2024", taken_before="2023") == []  # an empty range matches nothing


def test_table_sort_orders_put_unknown_keys_last(table):
    ranked = [9, 2, 7, 5]  # as relevance gave them
    assert [ranked[i] for i in table.order(ranked, "taken")] == [7, 5, 2, 9]
    assert [ranked[i] for i in table.order(ranked, "-taken")] == [2, 5, 7, 9]
    assert [ranked[i] for i in table.order(ranked, "size")] == [5, 9, 2, 7]  # pixels, then bytes
    unknown = ranked[:2] + [99] + ranked[2:]
    assert [unknown[i] for i in table.order(unknown, "-taken")] == [2, 5, 7, 9, 99]  # 99: not in the table
    assert table.order(ranked, "relevance").tolist() == [0, 1, 2, 3]


def test_folder_counts_include_subfolders(table):
    assert table.folder_counts() == [("/p/a", 1, 2), ("/p/a/b", 1, 1), ("/p/ab", 1, 1), ("/q", 1, 1)]


# -- FAISS restricted to a selection -------------------------------------------------------------------
@pytest.mark.parametrize("factory, exact_up_to", [("Flat", None), ("IVF64,Flat", None), ("IVF64,Flat", 0),
                                                  ("IVF64,SQ8", None)],
                         ids=["flat", "ivf-exact-selection", "ivf-probes", "ivf-sq8-probes"])
def test_selected_search_matches_exact_filtered_search(factory, exact_up_to, monkeypatch):
    """Small selections of an IVF,Flat index are scored exactly; larger ones (here: every one,
    with EXACT_SELECTION 0) and other codecs probe nprobe/√fraction lists."""
    import faiss

    from indexer import vectorstore
    from indexer.vectorstore import IdSelection, IndexSpec, VectorStore

    if exact_up_to is not None:
        monkeypatch.setattr(vectorstore, "EXACT_SELECTION", exact_up_to)

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((6_000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(len(vectors), dtype=np.int64) * 2 + 11
    store = VectorStore.build(ids, vectors, IndexSpec(factory, nprobe=8), target_recall=0.95)
    queries = vectors[:20] + 0.1 * rng.standard_normal((20, 16)).astype(np.float32)
    for fraction in (0.5, 0.1, 0.01, 0.001):
        chosen = rng.random(len(ids)) < fraction
        chosen[:3] = True
        selection = IdSelection.of(ids[chosen])
        truth = ids[chosen][faiss.knn(queries, vectors[chosen], 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
        found = store.search(queries, 10, selection)
        want = min(10, int(chosen.sum()))
        assert all(len(row) == want for row in found)  # a selective filter still fills the page
        assert all(hit.id in set(selection.ids.tolist()) for row in found for hit in row)
        recall = np.mean([len({h.id for h in row} & set(t[:want].tolist())) / want for row, t in zip(found, truth)])
        assert recall >= 0.9, (factory, fraction, recall)


# -- the library through the API and the CLI ----------------------------------------------------------
@pytest.fixture(scope="module")
def library_env(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """24 indexed photographs with metadata set on their rows: folders a/ and b/nested/, dates
    a day apart (every fifth unknown), three cameras, and their real formats and sizes."""
    from sqlalchemy import select, update

    from indexer.catalog import ImageRecord
    from indexer.database import open_database
    from indexer.settings import Settings

    folder = tmp_path_factory.mktemp("filters")
    env = make_env(folder, models_dir)
    photos = write_photo_folder(folder / "photos", photo_arrays)
    run_json(["index", str(photos), "--no-progress"], env)
    settings = Settings.from_env(env)
    sessions = open_database(settings)
    with sessions.begin() as session:
        rows = session.execute(select(ImageRecord.id, ImageRecord.path).order_by(ImageRecord.id)).all()
        for i, row in enumerate(rows):
            make, model = CAMERAS[i % 3]
            session.execute(update(ImageRecord).where(ImageRecord.id == row.id).values(
                folder=str(Path(row.path).parent), taken_at=None if i % 5 == 4 else T0 + timedelta(days=i),
                taken_source="exif", camera_make=make, camera_model=model))
    sessions.kw["bind"].dispose()
    return env, photos, settings


@pytest.fixture(scope="module")
def client(library_env):
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    _, _, settings = library_env
    return create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(settings)}).test_client()


@pytest.fixture(scope="module")
def facts(library_env) -> dict[int, dict]:
    """Every indexed picture's metadata, by id."""
    from sqlalchemy import select

    from indexer.catalog import ImageRecord
    from indexer.database import open_database

    sessions = open_database(library_env[2])
    with sessions() as session:
        rows = session.execute(select(ImageRecord).where(ImageRecord.status == "indexed")).scalars().all()
        found = {r.id: {"folder": r.folder, "taken_at": r.taken_at, "format": r.format, "width": r.width,
                        "height": r.height, "camera": " ".join(p for p in (r.camera_make, r.camera_model) if p),
                        "size_bytes": r.size_bytes} for r in rows}
    sessions.kw["bind"].dispose()
    return found


def search(client, **params):
    response = client.get("/api/search", query_string={"q": "a photograph", "k": 50, **params})
    assert response.status_code == 200, response.get_json()
    return check_schema(response, "/api/search")


def test_each_filter_through_the_api(client, facts, library_env):
    photos = library_env[1]
    nested = str(photos / "b" / "nested")
    every = search(client)
    assert every["total"] == len(facts) == 24 and every["next"] is None

    body = search(client, folder=str(photos / "b"))
    assert {r["id"] for r in body["results"]} == {i for i, f in facts.items() if f["folder"] == nested}
    assert body["total"] == len(body["results"]) == 12

    body = search(client, format="png")
    assert {r["id"] for r in body["results"]} == {i for i, f in facts.items() if f["format"] == "PNG"}
    assert body["total"] == len(body["results"]) > 0

    body = search(client, camera="iphone")
    assert {r["id"] for r in body["results"]} == {i for i, f in facts.items() if "iPhone" in f["camera"]}

    wide = 400
    body = search(client, min_width=wide, min_height=300)
    assert {r["id"] for r in body["results"]} == {i for i, f in facts.items()
                                                  if f["width"] >= wide and f["height"] >= 300}

    body = search(client, taken_after="2023-07-03", taken_before="2023-07-08")
    days = {i for i, f in facts.items() if f["taken_at"] is not None
            and datetime(2023, 7, 3) <= f["taken_at"].replace(tzinfo=None) < datetime(2023, 7, 9)}
    assert {r["id"] for r in body["results"]} == days and body["total"] == len(days)


def test_filters_combine_and_repeat(client, facts, library_env):
    photos = library_env[1]
    response = client.get("/api/search", query_string=[("q", "x"), ("k", 50), ("folder", str(photos / "a")),
                                                       ("folder", str(photos / "b")), ("format", "jpeg"),
                                                       ("camera", "canon")])
    body = check_schema(response, "/api/search")
    expected = {i for i, f in facts.items() if f["format"] == "JPEG" and "Canon" in f["camera"]}
    assert {r["id"] for r in body["results"]} == expected and body["total"] == len(expected)
    nothing = search(client, folder=str(photos / "nowhere"))
    assert nothing == {**nothing, "results": [], "total": 0, "next": None}


def test_sort_orders(client, facts):
    relevance = search(client)["results"]
    assert [r["score"] for r in relevance] == sorted((r["score"] for r in relevance), reverse=True)
    oldest = [r["id"] for r in search(client, sort="taken")["results"]]
    dated = sorted((i for i in facts if facts[i]["taken_at"] is not None), key=lambda i: facts[i]["taken_at"])
    assert oldest[: len(dated)] == dated and set(oldest[len(dated):]) == {i for i in facts if facts[i]["taken_at"] is None}
    newest = [r["id"] for r in search(client, sort="-taken")["results"]]
    assert newest[: len(dated)] == dated[::-1]
    largest = [r["id"] for r in search(client, sort="size")["results"]]
    pixels = [facts[i]["width"] * facts[i]["height"] for i in largest]
    assert pixels == sorted(pixels, reverse=True)


@pytest.mark.parametrize("sort", ["relevance", "-taken"])
def test_cursor_walks_every_result_once(client, facts, sort, library_env):
    photos = library_env[1]
    params = {"sort": sort, "k": 5, "folder": str(photos)}
    seen, body = [], search(client, **params)
    whole = [r["id"] for r in search(client, sort=sort)["results"]]
    while True:
        seen += [r["id"] for r in body["results"]]
        if body["next"] is None:
            break
        assert "=" not in body["next"] and "/" not in body["next"] and "+" not in body["next"]  # URL-safe
        body = search(client, cursor=body["next"], **params)
        assert body["total"] == 24
    assert seen == whole and len(set(seen)) == 24  # no repeats, no gaps, in the listing's order
    by_offset = search(client, offset=5, **params)  # offset keeps working
    assert [r["id"] for r in by_offset["results"]] == whole[5:10]


def test_a_cursor_from_another_search_is_refused(client, library_env):
    first = search(client, k=5)
    for other in ({"q": "something else"}, {"sort": "taken"}, {"format": "png"}, {"min_score": 0.1}):
        response = client.get("/api/search", query_string={"q": "a photograph", "k": 5, **other,
                                                           "cursor": first["next"]})
        assert response.status_code == 400, other
        assert response.get_json()["error"] == "bad_parameter" and "cursor" in response.get_json()["message"]
    for junk in ("abc", "x" * 300, "eyJ2IjoxfQ"):
        response = client.get("/api/search", query_string={"q": "a photograph", "cursor": junk})
        assert response.status_code == 400 and "cursor" in response.get_json()["message"]


@pytest.mark.parametrize("params, name", [
    ({"taken_after": "last summer"}, "taken_after"),
    ({"taken_before": "2023-02-30"}, "taken_before"),
    ({"min_width": "wide"}, "min_width"),
    ({"min_height": "-3"}, "min_height"),
    ({"folder": "relative/path"}, "folder"),
    ({"format": "*"}, "format"),
    ({"sort": "newest"}, "sort"),
    ({"taken_afterr": "2023"}, "taken_afterr"),
    ({"max_width": "100"}, "max_width"),
])
def test_bad_parameters_are_400s_naming_them(client, params, name):
    response = client.get("/api/search", query_string={"q": "a photograph", **params})
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "bad_parameter" and name in body["message"]
    response = client.post("/api/search/image", json={"image_id": 1, **params})
    assert response.status_code == 400 and name in response.get_json()["message"]


def test_image_searches_honour_filters_with_regions(client, facts, library_env):
    photos = library_env[1]
    nested = str(photos / "b" / "nested")
    query = next(photos.glob("b/nested/*-1.*")).read_bytes()  # a crop: its regions match too
    unfiltered = client.post("/api/search/image", query_string={"k": 5, "verify": "off"},
                             data={"image": (io.BytesIO(query), "q.jpg")}, content_type="multipart/form-data").get_json()
    assert facts[unfiltered["results"][0]["id"]]["folder"] == nested  # its own picture (or a crop) first
    response = client.post("/api/search/image", query_string={"folder": str(photos / "a"), "k": 50, "verify": "off"},
                           data={"image": (io.BytesIO(query), "q.jpg")}, content_type="multipart/form-data")
    body = check_schema(response, "/api/search/image", "post")
    assert body["results"] and all(facts[r["id"]]["folder"] != nested for r in body["results"])
    assert body["total"] == 12 and body["next"] is None

    response = client.post("/api/search/image", data={"image": (io.BytesIO(query), "q.jpg"), "folder": nested,
                                                      "k": "4", "sort": "size", "verify": "off"},
                           content_type="multipart/form-data")
    body = check_schema(response, "/api/search/image", "post")
    assert all(facts[r["id"]]["folder"] == nested for r in body["results"]) and body["total"] == 12
    pixels = [facts[r["id"]]["width"] * facts[r["id"]]["height"] for r in body["results"]]
    assert pixels == sorted(pixels, reverse=True)
    response = client.post("/api/search/image", data={"image": (io.BytesIO(query), "q.jpg"), "folder": nested,
                                                      "k": "4", "sort": "size", "verify": "off",
                                                      "cursor": body["next"]}, content_type="multipart/form-data")
    page2 = check_schema(response, "/api/search/image", "post")
    assert not {r["id"] for r in page2["results"]} & {r["id"] for r in body["results"]}


def test_more_like_this_honours_filters_and_cursor(client, facts):
    some = min(facts)
    body = check_schema(client.post("/api/search/image", json={"image_id": some, "k": 4, "format": ["png"],
                                                                "sort": "-taken", "verify": "off"}),
                        "/api/search/image", "post")
    pngs = {i for i, f in facts.items() if f["format"] == "PNG"} - {some}
    assert body["total"] == len(pngs) and {r["id"] for r in body["results"]} <= pngs
    seen = [r["id"] for r in body["results"]]
    while body["next"]:
        body = client.post("/api/search/image", json={"image_id": some, "k": 4, "format": ["png"], "sort": "-taken",
                                                      "verify": "off", "cursor": body["next"]}).get_json()
        seen += [r["id"] for r in body["results"]]
    assert sorted(seen) == sorted(pngs) and len(seen) == len(set(seen))
    dates = [facts[i]["taken_at"] for i in seen if facts[i]["taken_at"] is not None]
    assert dates == sorted(dates, reverse=True)


def test_folders_endpoint(client, library_env):
    photos = library_env[1]
    body = client.get("/api/folders").get_json()
    assert {f["path"]: f["count"] for f in body["folders"]} == {str(photos / "a"): 12, str(photos / "b" / "nested"): 12}
    assert body["total"] == 2 and body["next"] is None
    body = client.get("/api/folders", query_string={"q": "NESTED", "limit": 1}).get_json()
    assert [f["path"] for f in body["folders"]] == [str(photos / "b" / "nested")]
    assert client.get("/api/folders", query_string={"limit": 0}).status_code == 400


def test_cli_search_with_filters_prints_next(library_env, facts):
    env, photos, _ = library_env
    body = run_json(["search", "a photograph", "-k", "3", "--folder", str(photos / "a"), "--sort=-taken"], env)
    assert len(body["results"]) == 3 and body["total"] == 12 and body["next"]
    more = run_json(["search", "a photograph", "-k", "3", "--folder", str(photos / "a"), "--sort=-taken",
                     "--cursor", body["next"]], env)
    assert not {r["id"] for r in more["results"]} & {r["id"] for r in body["results"]}
    code, _, err = run_cli(["search", "a photograph", "--taken-after", "soon"], env)
    assert code != 0 and "taken_after" in err and len(err.strip().splitlines()) == 1


def test_a_page_reads_the_index_generation_once(client, library_env, monkeypatch):
    """A filtered search with a cursor binds its cursor, selection and next cursor to one state:
    the catalog's latest job is read once per search, not once per step."""
    from indexer.library import Library

    params = {"k": 5, "folder": str(library_env[1])}
    first = search(client, **params)
    reads = []
    real = Library._read_generation
    monkeypatch.setattr(Library, "_read_generation", lambda self: reads.append(1) or real(self))
    second = search(client, cursor=first["next"], **params)
    assert second["results"] and second["next"] and len(reads) == 1
    image = client.post("/api/search/image", json={"image_id": first["results"][0]["id"], **params})
    assert image.status_code == 200 and len(reads) == 2


def test_cursor_is_refused_once_the_index_changed(client, library_env):
    """Last: it adds a picture to the module's library."""
    from helpers import gradient_png

    first = search(client, k=5)
    again = search(client, k=5, cursor=first["next"])  # unchanged: accepted
    assert again["results"]
    response = client.post("/api/images", data={"image": (io.BytesIO(gradient_png()), "new.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 201
    response = client.get("/api/search", query_string={"q": "a photograph", "k": 5, "cursor": first["next"]})
    assert response.status_code == 400 and "cursor" in response.get_json()["message"]
    assert "changed" in response.get_json()["message"]
