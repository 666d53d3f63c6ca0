"""Local features at index time: stored per picture by every reader, backfilled by `loupe index`."""

from __future__ import annotations

from sqlalchemy import select, update

from helpers import run_json
from indexer import features
from indexer.catalog import ImageRecord
from indexer.factory import open_library
from indexer.images import DecodeLimits
from indexer.reader import DeviceJpegReader, ImageFileDataset
from indexer.settings import Settings
from searchapp.settings import ServiceSettings


def _blobs(settings) -> dict[str, bytes | None]:
    library = open_library(settings)
    try:
        with library.sessions() as session:
            return dict(session.execute(select(ImageRecord.path, ImageRecord.local_features)).all())
    finally:
        library.close()


def test_index_stores_compact_features_for_every_picture(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    blobs = _blobs(Settings.from_env(env))
    assert len(blobs) == 24 and all(blobs.values())
    for path, blob in blobs.items():
        found = features.decode(blob)
        assert 0 < len(found) <= features.INDEX_KEYPOINTS and len(blob) <= 16 * 1024, path
        assert found.width > 100 and found.height > 100


def test_index_backfills_missing_features_of_unchanged_files(env, photos):
    run_json(["index", str(photos), "--no-progress"], env)
    settings = Settings.from_env(env)
    before = _blobs(settings)
    library = open_library(settings)
    with library.sessions.begin() as session:  # as a catalog indexed before features existed
        session.execute(update(ImageRecord).values(local_features=None))
    library.close()
    again = run_json(["index", str(photos / "a"), "--no-progress"], env)
    assert again["embedded"] == 0 and again["features_added"] == 12
    after = _blobs(settings)
    assert {p: b for p, b in after.items() if b is not None} == {p: b for p, b in before.items() if "/a/" in p}
    third = run_json(["index", str(photos), "--no-progress"], env)
    assert third["features_added"] == 12 and _blobs(settings) == before


def test_device_reader_gives_the_cpu_readers_features(photos, embedder):
    paths = sorted(str(p) for p in photos.rglob("*.*"))
    cpu = ImageFileDataset([], embedder.prepare, DecodeLimits(), embedder.image_size)
    device = DeviceJpegReader("cpu", cpu)
    got = [item for batch in device.batches(paths, batch_size=4, threads=2) for item in batch]
    assert [item.features for item in got] == [cpu.read(p).features for p in paths]
    assert all(got_item.features for got_item in got)


def test_upload_gets_features(env, photo_arrays, tmp_path):
    import io

    from PIL import Image

    from searchapp import create_app

    app = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings.from_env(env)})
    buffer = io.BytesIO()
    Image.fromarray(photo_arrays["rocket"]).save(buffer, "PNG")
    response = app.test_client().post("/api/images", data={"image": (io.BytesIO(buffer.getvalue()), "r.png")},
                                      content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    blobs = _blobs(Settings.from_env(env))
    assert len(blobs) == 1 and len(features.decode(next(iter(blobs.values())))) > 50


def test_plain_lookup_verifies_a_rotated_copy_and_ranks_it_first(env, photos, embedder):
    import io

    from PIL import Image

    from indexer.lookup import reverse_lookup
    from indexer.query import SearchQuery
    from indexer.verify import VerifyOptions

    run_json(["index", str(photos), "--no-progress"], env)
    original = next(photos.rglob("coins-0.*"))
    with Image.open(original) as img:
        rotated = img.convert("RGB").rotate(-8, expand=True)
    buffer = io.BytesIO()
    rotated.save(buffer, "PNG")
    library = open_library(Settings.from_env(env))
    try:
        library.bind_model(embedder.identity)
        timings: dict[str, float] = {}
        page = reverse_lookup(library, embedder, buffer.getvalue(), SearchQuery(k=3, regions=True, verify=VerifyOptions()),
                              timings=timings)
        first = page.results[0]
        assert "coins" in first.path and first.match == "near-duplicate" and page.copy_found
        assert abs(first.verification.rotation_deg + 8) < 1 and "verify" in timings
        assert page.verify["mode"] == "on" and page.verify["verified"] >= 1
        plain = reverse_lookup(library, embedder, buffer.getvalue(), SearchQuery(k=3, regions=True))
        assert plain.verify == {"mode": "off"} and all(r.verification is None for r in plain.results)
    finally:
        library.close()
