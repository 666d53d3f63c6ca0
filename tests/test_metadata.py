"""Picture metadata (indexer.metadata): read from EXIF or the file time, recorded at index time
by every reader, backfilled without re-embedding, HEIC, and the API's view of it."""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from sqlalchemy import select, update

from helpers import run_json
from indexer.catalog import ImageRecord
from indexer.errors import ConfigError
from indexer.factory import open_library
from indexer.images import DecodeLimits, decode_image
from indexer.metadata import METADATA_VERSION, PictureMetadata, as_utc, file_time, folder_of, read_metadata
from indexer.reader import DeviceJpegReader, ImageFileDataset
from indexer.settings import Settings

MTIME_NS = 1_700_000_000_123_456_789  # 2023-11-14 22:13:20.123456 UTC
FILE_TIME = datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)
EIFFEL = ((48, 51, 29.88), "N", (2, 17, 40.2), "E")  # 48.8583 N, 2.2945 E


def make_exif(taken: str | None = None, offset: str | None = None, subsec: str | None = None,
              make: str | None = None, model: str | None = None, orientation: int | None = None,
              gps=None) -> Image.Exif:
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if orientation is not None:
        exif[0x0112] = orientation
    ifd = exif.get_ifd(0x8769)
    for tag, value in ((0x9003, taken), (0x9011, offset), (0x9291, subsec)):
        if value is not None:
            ifd[tag] = value
    if gps is not None:
        lat, lat_ref, lon, lon_ref = gps
        exif.get_ifd(0x8825).update({1: lat_ref, 2: tuple(IFDRational(v) for v in lat), 3: lon_ref,
                                     4: tuple(IFDRational(v) for v in lon)})
    return exif


def jpeg_bytes(exif: Image.Exif | bytes | None = None, size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    extra = {} if exif is None else {"exif": exif if isinstance(exif, bytes) else exif.tobytes()}
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90, **extra)
    return buffer.getvalue()


def reparsed(exif: Image.Exif) -> Image.Exif:
    """`exif` as Pillow parses it back from a JPEG file header."""
    return Image.open(io.BytesIO(jpeg_bytes(exif))).getexif()


# -- reading ---------------------------------------------------------------------------------------
def test_exif_date_with_offset_is_a_utc_instant():
    meta = read_metadata(reparsed(make_exif("2023:07:14 10:11:12", "+02:00", subsec="25")), MTIME_NS)
    assert meta.taken_at == datetime(2023, 7, 14, 8, 11, 12, 250000, tzinfo=timezone.utc)
    assert (meta.taken_source, meta.taken_offset_min, meta.version) == ("exif", 120, METADATA_VERSION)
    west = read_metadata(reparsed(make_exif("2023:07:14 10:11:12", "-05:30")), MTIME_NS)
    assert west.taken_at == datetime(2023, 7, 14, 15, 41, 12, tzinfo=timezone.utc) and west.taken_offset_min == -330


def test_exif_date_without_offset_reads_the_wall_time_as_utc():
    meta = read_metadata(reparsed(make_exif("2023:07:14 10:11:12")), MTIME_NS)
    assert meta.taken_at == datetime(2023, 7, 14, 10, 11, 12, tzinfo=timezone.utc)
    assert meta.taken_source == "exif" and meta.taken_offset_min is None


def test_no_exif_is_filed_by_its_file_time_and_says_so():
    for exif in (None, Image.Exif(), reparsed(make_exif(make="Canon"))):
        meta = read_metadata(exif, MTIME_NS)
        assert (meta.taken_at, meta.taken_source, meta.taken_offset_min) == (FILE_TIME, "file", None)
        assert meta.has_gps is False and meta.gps_lat is None


@pytest.mark.parametrize("taken, offset", [
    ("0000:00:00 00:00:00", None), ("    :  :     :  :  ", None), ("2023:02:31 10:00:00", None),
    ("garbage", "+02:00"), ("1066:10:14 09:00:00", None), ("2023:07:14 25:00:00", None),
])
def test_unusable_dates_fall_back_to_the_file_time(taken, offset):
    meta = read_metadata(reparsed(make_exif(taken, offset)), MTIME_NS)
    assert (meta.taken_at, meta.taken_source) == (FILE_TIME, "file")


def test_a_malformed_offset_is_ignored_not_the_date():
    meta = read_metadata(reparsed(make_exif("2023:07:14 10:11:12", "+99:00")), MTIME_NS)
    assert meta.taken_source == "exif" and meta.taken_offset_min is None
    assert meta.taken_at == datetime(2023, 7, 14, 10, 11, 12, tzinfo=timezone.utc)


def test_camera_make_and_model_are_clean_text():
    exif = reparsed(make_exif(make="Canon\x00\x00junk", model="  Canon EOS 5D Mark IV  " + "x" * 80))
    meta = read_metadata(exif, MTIME_NS)
    assert meta.camera_make == "Canon"
    assert meta.camera_model.startswith("Canon EOS 5D Mark IV") and len(meta.camera_model) <= 64
    assert read_metadata(reparsed(make_exif(make=" \x00")), MTIME_NS).camera_make is None


def test_orientation_is_kept_when_valid():
    assert read_metadata(reparsed(make_exif(orientation=6)), MTIME_NS).orientation == 6
    assert read_metadata(reparsed(make_exif(orientation=9)), MTIME_NS).orientation is None
    assert read_metadata(reparsed(make_exif()), MTIME_NS).orientation is None


def test_gps_is_recorded_as_present_and_kept_only_when_asked():
    exif = reparsed(make_exif(gps=EIFFEL))
    hidden = read_metadata(exif, MTIME_NS)
    assert hidden.has_gps is True and hidden.gps_lat is None and hidden.gps_lon is None
    kept = read_metadata(exif, MTIME_NS, keep_gps=True)
    assert kept.gps_lat == pytest.approx(48.8583) and kept.gps_lon == pytest.approx(2.2945)
    south_west = read_metadata(reparsed(make_exif(gps=((33, 51, 0), "S", (151, 12, 0), "W"))), MTIME_NS, True)
    assert south_west.gps_lat == pytest.approx(-33.85) and south_west.gps_lon == pytest.approx(-151.2)
    off_the_globe = read_metadata(reparsed(make_exif(gps=((95, 0, 0), "N", (2, 0, 0), "E"))), MTIME_NS, True)
    assert off_the_globe.has_gps is False and off_the_globe.gps_lat is None


def test_broken_exif_never_fails_a_file(tmp_path):
    good = make_exif("2023:07:14 10:11:12", make="Canon").tobytes()
    broken = [
        b"Exif\x00\x00" + b"\xff" * 40,  # not a TIFF header
        good[:20],  # truncated
        good[:8] + b"\xff\xff\xff\x7f" + good[12:],  # first IFD offset far past the end
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02\x87i\x00\x04\x00\x00\x00\x01\x7f\xff\xff\xff"
        b"\x88%\x00\x04\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00\x00",  # Exif IFD out of range, GPS IFD a loop
    ]
    reader = ImageFileDataset([], _prepare, DecodeLimits(), 32)
    for n, blob in enumerate(broken):
        path = tmp_path / f"broken-{n}.jpg"
        path.write_bytes(jpeg_bytes(blob))
        item = reader.read(str(path))
        assert item.error is None, (n, item.error)
        assert item.metadata.taken_source == "file", n
        assert item.metadata.taken_at == file_time(os.stat(path).st_mtime_ns)
        assert reader.read_metadata(str(path)).taken_source == "file"


def _prepare(image):
    import numpy as np

    return np.asarray(image.resize((32, 32)))


def test_folder_is_the_absolute_posix_parent():
    assert folder_of("/photos/2023/a.jpg") == "/photos/2023"
    assert folder_of("/a.jpg") == "/"


def test_metadata_survives_json_for_ray_rows_and_part_files():
    meta = read_metadata(reparsed(make_exif("2023:07:14 10:11:12", "+02:00", make="Canon", gps=EIFFEL)),
                         MTIME_NS, keep_gps=True)
    assert PictureMetadata.from_dict(meta.as_dict()) == meta
    assert PictureMetadata.from_dict({"nonsense": 1}) is None and PictureMetadata.from_dict(None) is None


@pytest.mark.parametrize("text, expected", [
    (None, False), ("", False), ("on", True), ("1", True), ("TRUE", True), ("off", False), ("0", False),
    ("false", False),
])
def test_keep_gps_setting(tmp_path, text, expected):
    env = {"LOUPE_HOME": str(tmp_path)}
    if text is not None:
        env["LOUPE_KEEP_GPS"] = text
    assert Settings.from_env(env).keep_gps is expected


def test_keep_gps_setting_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="LOUPE_KEEP_GPS"):
        Settings.from_env({"LOUPE_HOME": str(tmp_path), "LOUPE_KEEP_GPS": "maybe"})


# -- recording ---------------------------------------------------------------------------------------
def write_library(folder: Path) -> dict[str, Path]:
    """Pictures with and without EXIF (distinct contents), in two folders."""
    (folder / "trip").mkdir(parents=True)
    files = {
        "offset": (folder / "trip" / "offset.jpg",
                   make_exif("2023:07:14 10:11:12", "+02:00", make="Apple", model="iPhone 15", orientation=6,
                             gps=EIFFEL)),
        "plain": (folder / "trip" / "plain.jpg", make_exif("2021:01:02 03:04:05", make="Canon", model="EOS 5D")),
        "bare": (folder / "bare.jpg", None),
    }
    for n, (path, exif) in enumerate(files.values()):
        path.write_bytes(jpeg_bytes(exif, size=(64 + 8 * n, 48), colour=(40 * n, 90, 200 - 30 * n)))
    os.utime(files["bare"][0], ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))  # 2020-09-13
    png = folder / "drawing.png"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(png)
    os.utime(png, ns=(MTIME_NS, MTIME_NS))
    return {**{name: path for name, (path, _) in files.items()}, "png": png}


def rows_by_name(settings) -> dict[str, ImageRecord]:
    library = open_library(settings)
    try:
        with library.sessions() as session:
            rows = session.scalars(select(ImageRecord)).all()
            for row in rows:
                session.expunge(row)
            return {Path(row.path).stem: row for row in rows}
    finally:
        library.close()


def test_index_records_metadata_of_every_new_row(env, tmp_path):
    files = write_library(tmp_path / "lib")
    summary = run_json(["index", str(tmp_path / "lib"), "--no-progress"], env)
    assert summary["added"] == 4 and summary["metadata_added"] == 0
    rows = rows_by_name(Settings.from_env(env))
    offset, plain, bare, png = rows["offset"], rows["plain"], rows["bare"], rows["drawing"]
    assert as_utc(offset.taken_at) == datetime(2023, 7, 14, 8, 11, 12, tzinfo=timezone.utc)
    assert (offset.taken_source, offset.taken_offset_min, offset.orientation) == ("exif", 120, 6)
    assert (offset.camera_make, offset.camera_model, offset.has_gps) == ("Apple", "iPhone 15", True)
    assert offset.gps_lat is None and offset.gps_lon is None  # LOUPE_KEEP_GPS is off by default
    assert offset.folder == str(files["offset"].parent) and bare.folder == str(files["bare"].parent)
    assert as_utc(plain.taken_at) == datetime(2021, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert plain.taken_offset_min is None and plain.has_gps is False
    assert (bare.taken_source, bare.camera_make, bare.orientation) == ("file", None, None)
    assert (as_utc(png.taken_at), png.taken_source) == (FILE_TIME, "file")
    assert all(row.metadata_version == METADATA_VERSION for row in rows.values())


def test_keep_gps_is_followed_both_ways_on_the_next_index(env, tmp_path):
    write_library(tmp_path / "lib")
    settings = Settings.from_env(env)
    run_json(["index", str(tmp_path / "lib"), "--no-progress"], env)
    assert rows_by_name(settings)["offset"].gps_lat is None
    kept = run_json(["index", str(tmp_path / "lib"), "--no-progress"], {**env, "LOUPE_KEEP_GPS": "true"})
    assert kept["embedded"] == 0 and kept["metadata_added"] == 1  # only the picture with a position
    row = rows_by_name(settings)["offset"]
    assert row.gps_lat == pytest.approx(48.8583) and row.gps_lon == pytest.approx(2.2945)
    dropped = run_json(["index", str(tmp_path / "lib"), "--no-progress"], {**env, "LOUPE_KEEP_GPS": "off"})
    assert dropped["metadata_added"] == 0
    row = rows_by_name(settings)["offset"]
    assert (row.has_gps, row.gps_lat, row.gps_lon) == (True, None, None)


def test_device_reader_gives_the_cpu_readers_metadata(tmp_path, embedder):
    files = write_library(tmp_path / "lib")
    paths = sorted(str(p) for p in files.values())
    cpu = ImageFileDataset([], embedder.prepare, DecodeLimits(), embedder.image_size, keep_gps=True)
    device = DeviceJpegReader("cpu", cpu)
    got = [item for batch in device.batches(paths, batch_size=2, threads=2) for item in batch]
    assert [item.metadata for item in got] == [cpu.read(p).metadata for p in paths]
    assert [cpu.read_metadata(p) for p in paths] == [item.metadata for item in got]
    assert {item.metadata.taken_source for item in got} == {"exif", "file"}


def test_index_backfills_metadata_without_re_embedding(env, tmp_path):
    write_library(tmp_path / "lib")
    run_json(["index", str(tmp_path / "lib"), "--no-progress"], env)
    settings = Settings.from_env(env)
    before = rows_by_name(settings)
    library = open_library(settings)
    with library.sessions.begin() as session:  # as a catalog indexed before metadata existed
        session.execute(update(ImageRecord).values(
            folder=None, taken_at=None, taken_source=None, taken_offset_min=None, camera_make=None,
            camera_model=None, orientation=None, has_gps=None, metadata_version=None))
    library.close()
    again = run_json(["index", str(tmp_path / "lib" / "trip"), "--no-progress"], env)
    assert again["embedded"] == 0 and again["metadata_added"] == 2
    after = rows_by_name(settings)
    for name, row in after.items():
        old = before[name]
        assert (row.id, row.embedding, row.indexed_at, row.job_id) == (old.id, old.embedding, old.indexed_at, old.job_id)
        filled = name in ("offset", "plain")
        assert (row.metadata_version == METADATA_VERSION) is filled
        if filled:
            assert (as_utc(row.taken_at), row.camera_model, row.folder) == (as_utc(old.taken_at), old.camera_model,
                                                                            old.folder)
    third = run_json(["index", str(tmp_path / "lib"), "--no-progress"], env)
    assert third["embedded"] == 0 and third["metadata_added"] == 2
    assert {n: (as_utc(r.taken_at), r.taken_source) for n, r in rows_by_name(settings).items()} == {
        n: (as_utc(r.taken_at), r.taken_source) for n, r in before.items()}
    assert run_json(["index", str(tmp_path / "lib"), "--no-progress"], env)["metadata_added"] == 0


# -- HEIC/HEIF --------------------------------------------------------------------------------------
def heic_bytes(exif: Image.Exif | None = None, size=(64, 48), colour=(200, 30, 30)) -> bytes:
    """A small HEIC made here with pillow-heif (the test is skipped when it cannot encode)."""
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("this pillow-heif build has no HEVC encoder: cannot make a HEIC in the test")
    from indexer.images import register_heif

    assert register_heif()
    buffer = io.BytesIO()
    extra = {} if exif is None else {"exif": exif.tobytes()}
    Image.new("RGB", size, colour).save(buffer, "HEIF", quality=60, **extra)
    return buffer.getvalue()


def test_heic_decodes_with_its_exif_and_the_same_caps():
    data = heic_bytes(make_exif("2023:07:14 10:11:12", "+02:00", make="Apple", model="iPhone 15", orientation=6))
    decoded = decode_image(data)
    assert decoded.format == "HEIF" and (decoded.width, decoded.height) == (48, 64)  # turned upright
    assert decoded.image.size == (48, 64) and decoded.image.mode == "RGB"
    r, g, b = decoded.image.getpixel((10, 10))
    assert r > 150 and g < 80 and b < 80
    meta = read_metadata(decoded.exif, MTIME_NS, original_orientation=decoded.original_orientation)
    assert (meta.taken_source, meta.taken_offset_min, meta.camera_make, meta.orientation) == ("exif", 120, "Apple", 6)
    from indexer.errors import ImageReadError

    with pytest.raises(ImageReadError, match="over the 1000-pixel cap"):
        decode_image(data, DecodeLimits(max_pixels=1000))
    for cut in (12, len(data) // 2, len(data) - 8):
        with pytest.raises(ImageReadError):
            decode_image(data[:cut])


def test_heic_files_are_walked_indexed_and_dated(env, tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(heic_bytes(make_exif("2023:07:14 10:11:12", "+02:00", make="Apple")))
    (folder / "IMG_0002.heif").write_bytes(heic_bytes(colour=(20, 200, 30)))
    (folder / "broken.heic").write_bytes(heic_bytes(colour=(20, 20, 230))[:200])
    summary = run_json(["index", str(folder), "--no-progress"], env)
    assert (summary["added"], summary["failed"]) == (2, 1)
    rows = rows_by_name(Settings.from_env(env))
    first, second, broken = rows["IMG_0001"], rows["IMG_0002"], rows["broken"]
    assert (first.format, first.width, first.height, first.camera_make) == ("HEIF", 64, 48, "Apple")
    assert as_utc(first.taken_at) == datetime(2023, 7, 14, 8, 11, 12, tzinfo=timezone.utc)
    assert (second.status, second.taken_source) == ("indexed", "file")
    assert broken.status == "failed" and broken.error and broken.metadata_version is None
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    client = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(Settings.from_env(env))}).test_client()
    served = client.get(f"/images/{first.id}/file")
    assert served.status_code == 200 and served.mimetype == "image/heif"
    assert served.data == (folder / "IMG_0001.HEIC").read_bytes() and ".heic" in served.headers["Content-Disposition"]
    thumb = client.get(f"/images/{first.id}/thumb")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"


def test_ray_read_stage_and_part_files_carry_the_metadata(tmp_path, embedder):
    """The Ray job's columns and part files (indexer.distributed) keep what the CPU reader read
    (tests/test_distributed.py compares a whole Ray job's catalog with the local job's)."""
    from indexer.distributed import ReaderSettings, part_from_rows, read_part, read_stage, write_part
    from indexer.regions import RegionSpec

    files = write_library(tmp_path / "lib")
    paths = sorted(str(p) for p in files.values())
    reader = ReaderSettings(embedder.prepare, DecodeLimits(), embedder.image_size, RegionSpec(scales=()),
                            keep_gps=True)
    columns = read_stage({"path": paths}, reader)
    rows = [{name: column[i] for name, column in columns.items()} for i in range(len(paths))]
    part = part_from_rows([{**row, "vector": embedder.encode_images([Image.open(row["path"])])[0],
                            "region_vectors": [], "noise": 0.0} for row in rows])
    cpu = ImageFileDataset([], embedder.prepare, DecodeLimits(), embedder.image_size, keep_gps=True)
    expected = [cpu.read(p).metadata for p in paths]
    assert [item.metadata for item in part.items] == expected
    assert any(m.gps_lat is not None for m in expected)
    write_part(tmp_path / "part.npz", part, embedder.identity, RegionSpec(scales=()))
    again = read_part(tmp_path / "part.npz", embedder.identity, RegionSpec(scales=()))
    assert [item.metadata for item in again.items] == expected


# -- the API ---------------------------------------------------------------------------------------
def test_image_api_gives_the_metadata_and_coordinates_when_kept(env, tmp_path):
    from helpers import check_schema
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    files = write_library(tmp_path / "lib")
    run_json(["index", str(tmp_path / "lib"), "--no-progress"], {**env, "LOUPE_KEEP_GPS": "1"})
    rows = rows_by_name(Settings.from_env(env))
    assert rows["offset"].gps_lat == pytest.approx(48.8583) and rows["offset"].gps_lon == pytest.approx(2.2945)
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(Settings.from_env(env))}).test_client()
    path = "/api/images/{image_id}"
    shot = check_schema(client.get(f"/api/images/{rows['offset'].id}"), path)
    assert shot["taken_at"] == "2023-07-14T10:11:12+02:00"  # the instant, in the picture's own offset
    assert datetime.fromisoformat(shot["taken_at"]) == datetime(2023, 7, 14, 8, 11, 12, tzinfo=timezone.utc)
    assert (shot["taken_source"], shot["taken_offset_min"], shot["orientation"]) == ("exif", 120, 6)
    assert shot["camera"] == {"make": "Apple", "model": "iPhone 15"} and shot["has_gps"] is True
    assert shot["gps"] == {"lat": pytest.approx(48.8583), "lon": pytest.approx(2.2945)}
    assert shot["folder"] == str(files["offset"].parent)
    plain = check_schema(client.get(f"/api/images/{rows['plain'].id}"), path)
    assert plain["taken_at"] == "2021-01-02T03:04:05+00:00" and plain["taken_offset_min"] is None
    assert "gps" not in plain and plain["has_gps"] is False
    bare = check_schema(client.get(f"/api/images/{rows['bare'].id}"), path)
    assert (bare["taken_source"], bare["camera"], bare["orientation"]) == ("file", None, None)
    relative = client.get(f"/api/images/{rows['offset'].id}?paths=relative").get_json()
    assert (relative["path"], relative["folder"]) == ("trip/offset.jpg", "trip")


def test_postgres_round_trip_keeps_the_instant(any_db_env, tmp_path):
    write_library(tmp_path / "lib")
    run_json(["index", str(tmp_path / "lib"), "--no-progress"], any_db_env)
    rows = rows_by_name(Settings.from_env(any_db_env))
    assert as_utc(rows["offset"].taken_at) == datetime(2023, 7, 14, 8, 11, 12, tzinfo=timezone.utc)
    assert as_utc(rows["drawing"].taken_at) == FILE_TIME  # microseconds kept
    library = open_library(Settings.from_env(any_db_env))
    try:  # a filter on the column compares instants, whatever the session's time zone
        with library.sessions() as session:
            after = session.scalars(select(ImageRecord.path).where(
                ImageRecord.taken_at >= datetime(2023, 7, 14, 10, 11, 11, tzinfo=timezone(timedelta(hours=2))))).all()
    finally:
        library.close()
    assert sorted(Path(p).stem for p in after) == ["drawing", "offset"]


def test_taken_at_binds_any_instant_as_utc():
    from datetime import date

    from sqlalchemy.dialects import postgresql, sqlite

    from indexer.catalog import UtcDateTime

    column = UtcDateTime()
    paris = datetime(2023, 7, 14, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    assert column.process_bind_param(paris, sqlite.dialect()) == datetime(2023, 7, 14, 8, 0)
    assert column.process_bind_param(paris, postgresql.dialect()) == datetime(2023, 7, 14, 8, 0, tzinfo=timezone.utc)
    assert column.process_bind_param(date(2023, 7, 14), sqlite.dialect()) == datetime(2023, 7, 14)
    assert column.process_result_value(datetime(2023, 7, 14, 8, 0), sqlite.dialect()).tzinfo == timezone.utc
