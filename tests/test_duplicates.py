"""The duplicates review (#18): grouping, the guard against chaining, bursts, the keep
suggestion, dismissals, quarantine and restore, `loupe duplicates` and `/api/duplicates`.

One library of real photographs (8 photographs, 2 crops of each, one byte-for-byte copy) is
indexed once for the module; tests that change it put it back."""

from __future__ import annotations

import csv
import io
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update

from conftest import make_env, write_photo_folder
from helpers import assert_index_matches_catalog, check_schema, run_cli, run_json

from indexer.duplicates import (
    BURST,
    DUPLICATE,
    Member,
    burst_of,
    components,
    keep_choice,
    star_split,
)

TOKEN = "duplicates-token"


@pytest.fixture(scope="module")
def library_env(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    folder = tmp_path_factory.mktemp("dups")
    env = make_env(folder, models_dir)
    photos = write_photo_folder(folder / "photos", photo_arrays)
    (photos / "c").mkdir()
    shutil.copyfile(photos / "a" / "astronaut-0.png", photos / "c" / "astronaut-copy.png")  # the same bytes
    run_json(["index", str(photos), "--no-progress"], env)
    return env


@pytest.fixture(scope="module")
def library(library_env):
    from indexer.factory import open_library
    from indexer.settings import Settings

    lib = open_library(Settings.from_env(library_env))
    yield lib
    lib.close()


def _stem(path: str) -> str:
    name = Path(path).stem
    return name.split("-")[0]


def _groups(env, *args):
    return run_json(["duplicates", *args], env)["groups"]


# -- pure parts -----------------------------------------------------------------------------------
def test_star_split_never_chains_unrelated_pictures():
    # A chain 1-2-3-4-5 (each only like its neighbours) and a separate pair 7-8.
    weights = {(1, 2): 0.9, (2, 3): 0.9, (3, 4): 0.9, (4, 5): 0.9, (7, 8): 0.95}
    comps = components(range(1, 9), weights)
    assert [1, 2, 3, 4, 5] in comps and [7, 8] in comps and [6] in comps
    stars = star_split([1, 2, 3, 4, 5], weights)
    assert sorted(m for _, members in stars for m in members) == [1, 2, 3, 4, 5]
    for centre, members in stars:
        for m in members:
            assert m == centre or (min(m, centre), max(m, centre)) in weights  # each joined to its centre
    assert (2, [1, 2, 3]) in [(c, sorted(members)) for c, members in stars]  # 2: most edges, lowest id among ties
    # A copy the centre missed joins when it matches most of the star (5 matches 2, 3, 4, not 1);
    # 6, like 5 alone, stays out.
    clique = {(a, b): 1.0 for a, b in [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4), (2, 5), (3, 5), (4, 5), (5, 6)]}
    assert [(c, sorted(m)) for c, m in star_split(range(1, 7), clique)] == [(2, [1, 2, 3, 4, 5])]


def _member(id_, w, h, taken=None, path="/p/x.jpg", camera=None):
    return Member(id_, path, w, h, 1, f"h{id_}", taken, camera, 1.0, "verified")


def test_keep_reason_order():
    keep, reason = keep_choice([_member(1, 100, 100), _member(2, 200, 100)])
    assert keep.id == 2 and reason.startswith("most pixels (200×100)")
    keep, reason = keep_choice([_member(1, 100, 100, "2020-01-02T00:00:00+00:00"),
                                _member(2, 100, 100, "2020-01-01T00:00:00+00:00")])
    assert keep.id == 2 and "taken earliest" in reason
    keep, reason = keep_choice([_member(1, 100, 100, path="/photos/long/name.jpg"), _member(2, 100, 100, path="/p/a.jpg")])
    assert keep.id == 2 and "shortest path" in reason
    keep, _ = keep_choice([_member(3, 100, 100, "2020-01-01T00:00:00+00:00"), _member(4, 100, 100)])
    assert keep.id == 3  # a known date beats none


def test_burst_needs_one_camera_and_seconds_apart():
    t0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    members = [_member(1, 10, 10, camera="Canon EOS R6"), _member(2, 10, 10, camera="Canon EOS R6")]
    assert burst_of(members, {1: (t0, "exif"), 2: (t0 + timedelta(seconds=2), "exif")}, 10.0)
    assert not burst_of(members, {1: (t0, "exif"), 2: (t0, "exif")}, 10.0)  # copies share their instant
    assert not burst_of(members, {1: (t0, "exif"), 2: (t0 + timedelta(seconds=60), "exif")}, 10.0)
    assert not burst_of(members, {1: (t0, "file"), 2: (t0 + timedelta(seconds=2), "file")}, 10.0)
    other = [members[0], _member(2, 10, 10, camera="Nikon Z6")]
    assert not burst_of(other, {1: (t0, "exif"), 2: (t0 + timedelta(seconds=2), "exif")}, 10.0)


# -- the library's groups -------------------------------------------------------------------------
def test_groups_the_planted_copies(library_env):
    groups = _groups(library_env, "--refresh")
    assert len(groups) >= 6  # 8 photographs with their crops; an untrained tiny model misses a few crops
    for group in groups:
        assert group["kind"] == DUPLICATE
        assert len({_stem(image["path"]) for image in group["images"]}) == 1, group  # one photograph each
        assert group["keep"] == group["images"][0]["id"] and group["reason"]
    astronaut = next(g for g in groups if _stem(g["images"][0]["path"]) == "astronaut")
    by_name = {Path(i["path"]).name: i for i in astronaut["images"]}
    assert by_name["astronaut-copy.png"]["evidence"] == "exact"
    assert any(i["evidence"] == "verified" and i["inliers"] >= 10 for i in astronaut["images"])
    # The keep suggestion: the uncropped original has the most pixels (its byte copy ties: shorter path).
    assert Path(next(i for i in astronaut["images"] if i["id"] == astronaut["keep"])["path"]).name == "astronaut-0.png"


def test_cached_until_the_catalog_changes(library_env):
    first = run_json(["duplicates"], library_env)
    again = run_json(["duplicates"], library_env)
    assert again["stats"]["cached"] is True and again["groups"] == first["groups"]


def test_cli_csv_and_kind(library_env):
    code, out, err = run_cli(["duplicates", "--csv"], library_env)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    groups = _groups(library_env)
    assert len(rows) == sum(len(g["images"]) for g in groups)
    assert sum(r["keep"] == "yes" for r in rows) == len(groups)
    assert _groups(library_env, "--kind", "burst") == []
    code, out, err = run_cli(["duplicates", "--dismiss", "nonexistent"], library_env)
    assert code == 1 and "no duplicates group" in err and out == ""


def test_dismiss_is_remembered(library_env):
    groups = _groups(library_env)
    gid = groups[0]["id"]
    assert run_json(["duplicates", "--dismiss", gid], library_env)["dismissed"] is True
    assert gid not in {g["id"] for g in _groups(library_env)}
    assert gid in {g["id"] for g in _groups(library_env, "--dismissed")}
    assert gid not in {g["id"] for g in _groups(library_env, "--refresh")}  # recomputed: still dismissed
    run_json(["duplicates", "--undismiss", gid], library_env)
    assert gid in {g["id"] for g in _groups(library_env)}


def test_burst_group_is_shown_not_removable(library_env, library):
    from indexer.catalog import ImageRecord

    group = next(g for g in _groups(library_env) if len(g["images"]) == 3 and _stem(g["images"][0]["path"]) != "astronaut")
    ids = [i["id"] for i in group["images"]]
    t0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    with library.sessions.begin() as session:
        for n, image_id in enumerate(ids):
            session.execute(update(ImageRecord).where(ImageRecord.id == image_id).values(
                camera_make="Canon", camera_model="Canon EOS R6", taken_at=t0 + timedelta(seconds=n),
                taken_source="exif"))
    try:
        burst = next(g for g in _groups(library_env, "--refresh") if g["id"] == group["id"])
        assert burst["kind"] == BURST and "nothing suggested for removal" in burst["reason"]
        assert all(i["camera"] == "Canon EOS R6" for i in burst["images"])
        assert [g["id"] for g in _groups(library_env, "--kind", "burst")] == [group["id"]]
        code, _, err = run_cli(["duplicates", "--quarantine", group["id"]], library_env)
        assert code == 1 and "burst" in err
    finally:
        with library.sessions.begin() as session:
            session.execute(update(ImageRecord).where(ImageRecord.id.in_(ids)).values(
                camera_make=None, camera_model=None, taken_at=None, taken_source=None))
        _groups(library_env, "--refresh")


def test_quarantine_and_restore_round_trip(library_env, library):
    from indexer.settings import Settings

    settings = Settings.from_env(library_env)
    groups = _groups(library_env)
    group = next(g for g in groups if _stem(g["images"][0]["path"]) == "astronaut")
    others = [i for i in group["images"] if i["id"] != group["keep"]]
    moved = run_json(["duplicates", "--quarantine", group["id"]], library_env)
    assert moved["kept"] == group["keep"] and len(moved["quarantined"]) == len(others)
    for entry in moved["quarantined"]:
        assert not Path(entry["original_path"]).exists()
        stored = Path(entry["stored_path"])
        assert stored.is_file() and settings.home / "quarantine" in stored.parents
        assert library.image_by_path(entry["original_path"]) is None  # the catalog followed
    kept = library.image(group["keep"])
    assert kept is not None and Path(kept.path).is_file()
    assert_index_matches_catalog(settings)
    after = _groups(library_env)
    assert group["id"] not in {g["id"] for g in after} and len(after) == len(groups) - 1
    listed = run_json(["duplicates", "--quarantined"], library_env)["entries"]
    assert {e["original_path"] for e in listed} == {i["path"] for i in others}

    restored = run_json(["duplicates", "--restore", group["id"]], library_env)["restored"]
    assert {r["original_path"] for r in restored} == {i["path"] for i in others}
    for image in others:
        assert Path(image["path"]).is_file()
        assert library.image_by_path(image["path"]) is not None
    assert not any((settings.home / "quarantine").rglob("*.*"))
    assert_index_matches_catalog(settings)
    back = next(g for g in _groups(library_env) if g["id"] == group["id"])  # the same group, same id
    assert {Path(i["path"]).name for i in back["images"]} == {Path(i["path"]).name for i in group["images"]}
    assert run_json(["duplicates", "--quarantined"], library_env)["entries"] == []


def test_refuses_files_outside_the_indexed_roots(library_env, library):
    from indexer.catalog import ImageRecord
    from indexer.errors import PathNotAllowedError
    from indexer.quarantine import quarantine_images

    group = _groups(library_env)[0]
    victim = group["images"][1]["id"]
    job = library.image(victim).job_id
    with library.sessions.begin() as session:  # as if catalogued from no known folder
        session.execute(update(ImageRecord).where(ImageRecord.id == victim).values(job_id=None))
    try:
        with library.writer(), pytest.raises(PathNotAllowedError):
            quarantine_images(library, [victim])
        assert Path(group["images"][1]["path"]).is_file()
    finally:
        with library.sessions.begin() as session:
            session.execute(update(ImageRecord).where(ImageRecord.id == victim).values(job_id=job))


# -- the API --------------------------------------------------------------------------------------
@pytest.fixture
def client(library_env):
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    service = ServiceSettings.from_env({**library_env, "LOUPE_API_TOKEN": TOKEN})
    return create_app({"TESTING": True, "LOUPE_SETTINGS": service}).test_client()


def test_api_pages_through_the_groups(client, library_env):
    every = _groups(library_env)
    seen, cursor = [], None
    while True:
        response = client.get("/api/duplicates", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})})
        body = check_schema(response, "/api/duplicates")
        assert body["total"] == len(every) and len(body["groups"]) <= 2
        seen += [g["id"] for g in body["groups"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [g["id"] for g in every]
    image = body["groups"][-1]["images"][0]
    assert image["thumb_url"].endswith(f"/images/{image['id']}/thumb")
    bad = client.get("/api/duplicates", query_string={"cursor": "nonsense"})
    assert bad.status_code == 400 and bad.get_json()["error"] == "bad_parameter" and "cursor" in bad.get_json()["message"]
    assert client.get("/api/duplicates", query_string={"limit": 0}).status_code == 400
    assert client.get("/api/duplicates", query_string={"kind": "burst"}).get_json()["groups"] == []


def test_api_actions_need_the_token(client, library_env):
    gid = _groups(library_env)[0]["id"]
    denied = client.post(f"/api/duplicates/{gid}/dismiss")
    assert denied.status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = check_schema(client.post(f"/api/duplicates/{gid}/dismiss", headers=headers),
                        "/api/duplicates/{group_id}/dismiss", "post")
    assert body == {"group": gid, "dismissed": True}
    assert gid not in {g["id"] for g in client.get("/api/duplicates").get_json()["groups"]}
    client.post(f"/api/duplicates/{gid}/undismiss", headers=headers)
    assert gid in {g["id"] for g in client.get("/api/duplicates").get_json()["groups"]}
    bad = client.post(f"/api/duplicates/{gid}/quarantine", json=[None, None], headers=headers)
    assert bad.status_code == 400 and bad.get_json()["error"] == "bad_parameter"
    bad = client.post(f"/api/duplicates/{gid}/quarantine", json={"keep": "x"}, headers=headers)
    assert bad.status_code == 400 and "keep" in bad.get_json()["message"]
    missing = client.post("/api/duplicates/0123456789abcdef/quarantine", headers=headers)
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_indexed"
    assert client.post("/api/duplicates/not-a-group/dismiss", headers=headers).status_code == 404
    body = check_schema(client.get("/api/quarantine"), "/api/quarantine")
    assert body == {"entries": []}


def test_api_quarantine_and_restore_one_entry(client, library_env):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    group = next(g for g in _groups(library_env) if len(g["images"]) == 2) if any(
        len(g["images"]) == 2 for g in _groups(library_env)) else _groups(library_env)[-1]
    moved = check_schema(client.post(f"/api/duplicates/{group['id']}/quarantine", headers=headers),
                         "/api/duplicates/{group_id}/quarantine", "post")
    entries = moved["quarantined"]
    assert entries and all(not Path(e["original_path"]).exists() for e in entries)
    for entry in entries:
        body = check_schema(client.post(f"/api/quarantine/{entry['id']}/restore", headers=headers),
                            "/api/quarantine/{entry_id}/restore", "post")
        assert Path(body["restored"][0]["original_path"]).is_file()
    again = client.post(f"/api/quarantine/{entries[0]['id']}/restore", headers=headers)
    assert again.status_code == 404
