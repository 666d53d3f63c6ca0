"""The regional index: region geometry (a pure function, table-tested), regions stored and
mirrored in FAISS, crops found through their region, and regions following their vector."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import assert_index_matches_catalog, run_cli, run_json
from indexer.errors import ConfigError
from indexer.regions import Box, RegionSpec, region_boxes
from indexer.settings import Settings


@pytest.mark.parametrize("width, height, scales, count, sides", [
    (1024, 768, (2, 3), 18, {512, 384}),  # 2x3 at scale 2, 3x4 at scale 3
    (768, 1024, (2, 3), 18, {512, 384}),  # portrait: the same grid turned
    (1000, 1000, (2, 3), 13, {667, 500}),  # square: 2x2 and 3x3
    (1920, 1080, (2, 3), 26, {720, 540}),
    (1024, 768, (1,), 2, {768}),  # R-MAC's first scale: squares of the short side
    (1024, 768, (), 0, set()),  # regions off
    (40, 40, (2, 3), 0, set()),  # too small to be worth a vector
])
def test_region_boxes_table(width, height, scales, count, sides):
    boxes = region_boxes(width, height, RegionSpec(scales=scales))
    assert len(boxes) == count
    assert {b.w for b in boxes} == sides
    for b in boxes:
        assert b.w == b.h and b.x >= 0 and b.y >= 0 and b.x + b.w <= width and b.y + b.h <= height


def test_regions_cover_the_picture_with_overlap():
    width, height = 1280, 720
    for scale in (2, 3):
        boxes = region_boxes(width, height, RegionSpec(scales=(scale,)))
        covered = np.zeros((height, width), dtype=bool)
        for b in boxes:
            covered[b.y : b.y + b.h, b.x : b.x + b.w] = True
        assert covered.all(), f"scale {scale} leaves pixels uncovered"
        xs = sorted({b.x for b in boxes})
        side = boxes[0].w
        assert all((side - (b - a)) / side >= 0.4 - 1e-3 for a, b in zip(xs, xs[1:]))


@pytest.mark.parametrize("text, scales", [(None, (2,)), ("", (2,)), ("off", ()), ("3,2", (2, 3)), ("1, 2,3", (1, 2, 3))])
def test_region_spec_parse(text, scales):
    assert RegionSpec.parse(text).scales == scales


def test_region_penalty_from_the_environment():
    assert RegionSpec.parse("2,3", "0.01") == RegionSpec(scales=(2, 3), penalty=0.01)
    assert Settings.from_env({"LOUPE_HOME": "/tmp/x", "LOUPE_REGION_PENALTY": "0"}).regions.penalty == 0.0
    with pytest.raises(ConfigError, match="LOUPE_REGION_PENALTY"):
        RegionSpec.parse(None, "high")


@pytest.mark.parametrize("text", ["two", "0,2", "9", ","])
def test_region_spec_rejects_bad_values(text):
    with pytest.raises(ConfigError, match="LOUPE_REGIONS"):
        RegionSpec.parse(text)


def test_draft_size_keeps_the_smallest_region_at_model_size():
    assert RegionSpec(scales=(2, 3)).draft_size(224) == 448
    assert RegionSpec(scales=(2,)).draft_size(224) == 336
    assert RegionSpec(scales=()).draft_size(224) == 224


def test_box_scaled_to_a_reduced_decode():
    assert Box(100, 50, 200, 200).scaled(0.5, 0.5) == (50, 25, 150, 125)
    assert Box(0, 0, 1, 1).scaled(0.1, 0.1) == (0, 0, 1, 1)  # never empty


def catalog_regions(settings):
    from sqlalchemy import select

    from indexer.catalog import RegionRecord
    from indexer.database import open_database

    sessions = open_database(settings)
    with sessions() as session:
        rows = session.execute(select(RegionRecord.id, RegionRecord.image_id, RegionRecord.x, RegionRecord.y,
                                      RegionRecord.w, RegionRecord.h)).all()
    sessions.kw["bind"].dispose()
    return rows


def test_index_stores_each_pictures_regions(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    settings = Settings.from_env(env)
    indexed = assert_index_matches_catalog(settings)
    rows = catalog_regions(settings)
    from indexer.library import Library

    library = Library.open(settings)
    for image_id in indexed:
        record = library.image(image_id)
        expected = region_boxes(record.width, record.height, settings.regions)
        mine = sorted((r.x, r.y, r.w, r.h) for r in rows if r.image_id == image_id)
        assert mine == sorted((b.x, b.y, b.w, b.h) for b in expected)
    library.close()
    status = run_json(["status"], env)
    assert status["regions"]["vectors"] == len(rows) > 0


def test_regions_off_stores_none(env, photos):
    env = {**env, "LOUPE_REGIONS": "off"}
    run_json(["index", str(photos), "--no-progress"], env)
    assert catalog_regions(Settings.from_env(env)) == []


def test_a_crop_is_found_through_its_region(env, photos, tmp_path, index_photos):
    """A crop that is one of a photo's regions finds the photo first, and says where."""
    index_photos(env, photos)
    original = next(photos.rglob("coffee-0.*"))
    with Image.open(original) as img:
        picture = img.convert("RGB")
    box = region_boxes(picture.width, picture.height)[-1]  # a small corner region
    crop = tmp_path / "crop.png"
    picture.crop((box.x, box.y, box.x + box.w, box.y + box.h)).save(crop)
    page = run_json(["search", "--image", str(crop), "-k", "3", "--verify", "off"], env)
    first = page["results"][0]
    assert first["path"] == str(original)
    assert first["region"] == box.as_list()
    assert first["score"] > 0.99
    # Verified, the photo's other files that contain the corner (its crops) are copies too and
    # rank by their evidence; the photo is one of them, still found through its region.
    verified = run_json(["search", "--image", str(crop), "-k", "3"], env)
    found = next(r for r in verified["results"] if r["path"] == str(original))
    assert found["match"] == "near-duplicate" and found["region"] == box.as_list()
    assert found["verification"]["relation"] == "query-in-result"
    whole_only = run_json(["search", "--image", str(crop), "-k", "3", "--no-regions", "--verify", "off"], env)
    assert all(r["region"] is None for r in whole_only["results"])
    assert whole_only["results"][0]["score"] < first["score"]


def test_removing_an_image_removes_its_regions_and_a_duplicate_inherits_them(env, photos, tmp_path, index_photos):
    original = next(photos.rglob("astronaut-0.*"))
    copy = photos / f"copy-of-astronaut{original.suffix}"
    copy.write_bytes(original.read_bytes())
    index_photos(env, photos)
    settings = Settings.from_env(env)
    from indexer.library import Library

    library = Library.open(settings)
    holder, duplicate = (library.image_by_path(str(p)) for p in (original, copy))
    if holder.status != "indexed":
        holder, duplicate = duplicate, holder
    library.close()
    assert duplicate.duplicate_of == holder.id
    before = {r.id for r in catalog_regions(settings) if r.image_id == holder.id}
    assert before
    run_json(["remove", holder.path], env)
    after = catalog_regions(settings)
    assert {r.id for r in after if r.image_id == duplicate.id} == before  # same ids: FAISS unchanged
    assert_index_matches_catalog(settings)
    run_json(["remove", duplicate.path], env)
    assert not {r.id for r in catalog_regions(settings)} & before
    assert_index_matches_catalog(settings)


def test_lost_regions_file_is_rebuilt_from_the_catalog(env, photos, index_photos):
    index_photos(env, photos)
    settings = Settings.from_env(env)
    settings.regions_path.unlink()
    code, out, err = run_cli(["search", "--image", str(next(photos.rglob("camera-0.*"))), "--json"], env)
    assert code == 0, err
    from indexer.library import Library

    library = Library.open(settings)
    assert len(library.regions.store) == len(catalog_regions(settings))
    library.close()


def test_png_upload_of_the_same_pixels_is_exact(env, photos, tmp_path, index_photos):
    index_photos(env, photos)
    original = next(p for p in photos.rglob("*-0.png"))
    with Image.open(original) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "BMP")  # other bytes, same pixels
    query = tmp_path / "same.bmp"
    query.write_bytes(buf.getvalue())
    page = run_json(["search", "--image", str(query), "-k", "3"], env)
    assert page["results"][0]["path"] == str(original)
    assert page["results"][0]["match"] == "exact"
    assert page["copy_found"] is True
