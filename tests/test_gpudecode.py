"""The device JPEG path (torchvision decode_jpeg): run here on the CPU device, which is the
same code as on CUDA (nvJPEG); the CUDA run is marked `gpu`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import run_json
from hostile_images import hostile_images, valid_images
from indexer.images import DecodeLimits
from indexer.reader import DeviceJpegReader, ImageFileDataset, device_decode_available
from indexer.regions import RegionSpec


def _folder(tmp_path, photos):
    """Real photographs plus every awkward valid and hostile file, and an EXIF-rotated JPEG."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(photos.rglob("*.*")):
        (folder / path.name).write_bytes(path.read_bytes())
    for name, data in {**valid_images(), **hostile_images()}.items():
        (folder / f"x-{name}").write_bytes(data)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the displayed picture is taller than wide
    rotated = io.BytesIO()
    Image.open(next(photos.rglob("chelsea-0.*"))).convert("RGB").save(rotated, "JPEG", exif=exif, quality=92)
    (folder / "rotated.jpg").write_bytes(rotated.getvalue())
    truncated = next(p for p in sorted(photos.rglob("*.jpg"))).read_bytes()
    (folder / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    return sorted(str(p) for p in folder.iterdir())


def _readers(embedder, regions=RegionSpec()):
    cpu = ImageFileDataset([], embedder.prepare, DecodeLimits(max_pixels=5_000_000), embedder.image_size, regions)
    return cpu, DeviceJpegReader("cpu", cpu)


def test_device_reader_matches_the_pillow_path_file_by_file(tmp_path, photos, embedder):
    paths = _folder(tmp_path, photos)
    cpu, device = _readers(embedder)
    expected = [cpu.read(p) for p in paths]
    got = [item for batch in device.batches(paths, batch_size=5, threads=2) for item in batch]
    assert [g.path for g in got] == paths
    decoded_on_device = 0
    for want, item in zip(expected, got):
        facts = ("size", "mtime_ns", "sha256", "width", "height", "format", "error", "regions")
        assert {f: getattr(item, f) for f in facts} == {f: getattr(want, f) for f in facts}, item.path
        if want.error is not None:
            continue
        pixels = np.asarray(item.pixels)
        assert pixels.shape == want.pixels.shape and pixels.dtype == np.uint8
        # Pillow decodes a draft (DCT-scaled) picture; torchvision the full one: close, not equal.
        assert np.abs(pixels.astype(int) - want.pixels.astype(int)).mean() < 6, item.path
        if want.region_pixels is None:
            assert item.region_pixels is None
        else:
            assert np.asarray(item.region_pixels).shape == want.region_pixels.shape
        decoded_on_device += not isinstance(item.pixels, np.ndarray)
    jpegs = sum(p.endswith(".jpg") and "magic" not in p and "html" not in p and "empty" not in p for p in paths)
    assert decoded_on_device >= jpegs - 3  # CMYK, the truncated and the absurd-EXIF JPEGs may fall back
    truncated = next(g for g in got if g.path.endswith("truncated.jpg"))  # left to the Pillow path, which refuses it
    assert truncated.error and "truncated" in truncated.error

    vectors = embedder.encode_batch([g.pixels for g in got if g.error is None])
    reference = embedder.encode_batch([w.pixels for w in expected if w.error is None])
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.98


def test_rotated_jpeg_is_oriented_like_pillow(tmp_path, photos, embedder):
    paths = [p for p in _folder(tmp_path, photos) if p.endswith("rotated.jpg")]
    cpu, device = _readers(embedder, RegionSpec(scales=()))
    item = next(iter(device.batches(paths, 1)))[0]
    want = cpu.read(paths[0])
    assert (item.width, item.height) == (want.width, want.height) and item.height > item.width
    assert np.abs(np.asarray(item.pixels).astype(int) - want.pixels.astype(int)).mean() < 6


def test_index_job_with_torchvision_decoding_gives_the_pillow_jobs_catalog(env, photos, tmp_path):
    pillow = run_json(["index", str(photos), "--no-progress", "--decode", "pillow"], env)
    other = {**env, "LOUPE_HOME": str(tmp_path / "tv-home")}
    (tmp_path / "tv-home").mkdir()
    (tmp_path / "tv-home" / "models").symlink_to((tmp_path / "home" / "models").resolve())
    device = run_json(["index", str(photos), "--no-progress", "--decode", "torchvision"], other)
    for key in ("added", "duplicates", "failed"):
        assert device[key] == pillow[key]
    target = next(photos.rglob("coffee-0.*"))
    a = run_json(["search", "--image", str(target), "-k", "3"], env)["results"]
    b = run_json(["search", "--image", str(target), "-k", "3"], other)["results"]
    assert a[0]["path"] == b[0]["path"] == str(target)


def test_device_decode_available_on_cpu():
    assert device_decode_available("cpu")


@pytest.mark.gpu
def test_nvjpeg_decodes_on_cuda_like_pillow(tmp_path, photos, embedder):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    assert device_decode_available("cuda")
    paths = [p for p in _folder(tmp_path, photos) if p.endswith(".jpg")]
    cpu = ImageFileDataset([], embedder.prepare, DecodeLimits(), embedder.image_size, RegionSpec())
    device = DeviceJpegReader("cuda", cpu)
    got = [item for batch in device.batches(paths, 8) for item in batch]
    assert [g.path for g in got] == paths
    for item in got:  # nvJPEG must accept and refuse exactly the files the Pillow path does
        want = cpu.read(item.path)
        assert (item.error is None) == (want.error is None), (item.path, item.error, want.error)
    on_gpu = [g for g in got if g.error is None and isinstance(g.pixels, torch.Tensor) and g.pixels.is_cuda]
    assert len(on_gpu) >= len(paths) - 8
    for item in on_gpu:
        want = cpu.read(item.path)
        got_pixels, want_pixels = item.pixels.cpu().numpy().astype(float), want.pixels.astype(float)
        assert got_pixels.shape == want_pixels.shape, item.path
        if "/x-" in item.path:  # random-noise test pictures: nvJPEG's chroma upsampling differs from
            # libjpeg's by ~12 levels on pure noise (H200), so only the picture itself must agree
            assert np.corrcoef(got_pixels.ravel(), want_pixels.ravel())[0, 1] > 0.9, item.path
        else:  # photographs
            assert np.abs(got_pixels - want_pixels).mean() < 6, item.path


def test_truncated_jpegs_are_left_to_the_pillow_path():
    """nvJPEG decodes a truncated JPEG as if whole (seen on an H200); the reader must send it
    to the Pillow path, which refuses it as always."""
    from indexer.reader import jpeg_looks_complete

    whole = io.BytesIO()
    thumb = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 10, 10)).save(thumb, "JPEG")
    exif = Image.Exif()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(
        whole, "JPEG", quality=90, exif=exif)
    data = whole.getvalue()
    assert jpeg_looks_complete(data) and jpeg_looks_complete(data + b"trailing bytes")
    assert not jpeg_looks_complete(data[: len(data) // 2]) and not jpeg_looks_complete(data[:-2])
    app1 = b"Exif\0\0" + thumb.getvalue()  # a segment holding a whole JPEG, end marker included
    with_thumbnail = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    assert jpeg_looks_complete(with_thumbnail) and not jpeg_looks_complete(with_thumbnail[:-40])
    progressive = io.BytesIO()
    Image.open(io.BytesIO(data)).save(progressive, "JPEG", progressive=True, quality=90)
    cut = progressive.getvalue()[: len(progressive.getvalue()) * 2 // 3]  # cut after some of its scans
    assert jpeg_looks_complete(progressive.getvalue()) and not jpeg_looks_complete(cut)
