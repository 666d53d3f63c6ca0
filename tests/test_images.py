"""Tests for indexer/images.py: finding image files and decoding them safely into RGB.

Every fixture is made with Pillow in tmp_path (nothing is committed); real photographs come
from scikit-image's bundled sample data, which needs no network.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.errors import ImageReadError
from indexer.images import (
    DecodedImage,
    DecodeLimits,
    content_hash,
    decode_image,
    iter_image_files,
    load_image_file,
    read_file,
)

WHITE = (255, 255, 255)
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


# -- helpers ---------------------------------------------------------------------------------


def photo(name: str) -> np.ndarray:
    """A real photograph (H, W, 3) uint8 bundled with scikit-image."""
    import skimage.data

    return getattr(skimage.data, name)()


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pixels(decoded: DecodedImage) -> np.ndarray:
    return np.asarray(decoded.image).astype(np.int16)


def assert_colour(actual, expected, tol: int = 6) -> None:
    assert np.all(np.abs(np.asarray(actual, dtype=np.int16) - np.asarray(expected, dtype=np.int16)) <= tol), (
        f"{tuple(int(v) for v in actual)} is not close to {expected}"
    )


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return photo("chelsea")  # 300 x 451, a cat


# -- formats ----------------------------------------------------------------------------------

# (suffix, Pillow format, save params, expected DecodedImage.format, max mean abs pixel error)
FORMATS = [
    (".jpg", "JPEG", {"quality": 95}, "JPEG", 4.0),
    (".png", "PNG", {}, "PNG", 0.0),
    (".webp", "WEBP", {"quality": 90}, "WEBP", 5.0),
    (".gif", "GIF", {}, "GIF", 8.0),  # quantised to a 256-colour palette
    (".bmp", "BMP", {}, "BMP", 0.0),
    (".tif", "TIFF", {}, "TIFF", 0.0),
]


@pytest.mark.parametrize("suffix,pil_format,params,expected_format,max_error", FORMATS, ids=[f[1] for f in FORMATS])
def test_real_photo_decodes_to_rgb_in_every_supported_format(
    tmp_path, chelsea, suffix, pil_format, params, expected_format, max_error
):
    """A real photograph saved in each format decodes to an RGB picture close to the original."""
    path = write(tmp_path, f"cat{suffix}", encode(Image.fromarray(chelsea), pil_format, **params))
    decoded = load_image_file(path)
    assert isinstance(decoded, DecodedImage)
    assert decoded.format == expected_format
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (451, 300)
    assert (decoded.width, decoded.height) == (451, 300)
    error = np.abs(pixels(decoded) - chelsea.astype(np.int16)).mean()
    assert error <= max_error, f"mean abs error {error:.2f} for {pil_format}"


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 24), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3  # really animated
    decoded = load_image_file(write(tmp_path, "anim.gif", data))
    assert decoded.format == "GIF"
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (32, 24)
    assert_colour(decoded.image.getpixel((10, 10)), RED, tol=0)


def test_multi_picture_jpeg_decodes_as_mpo_with_draft(tmp_path):
    """MPO (camera multi-picture JPEG) gives its first picture and also takes draft mode."""
    first, second = Image.new("RGB", (640, 480), RED), Image.new("RGB", (640, 480), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    decoded = load_image_file(write(tmp_path, "stereo.jpg", data), draft_size=100)
    assert decoded.format == "MPO"
    assert (decoded.width, decoded.height) == (640, 480)
    assert decoded.image.size == (160, 120)  # 1/4 scale keeps both sides >= 100
    assert_colour(decoded.image.getpixel((50, 50)), RED)


# -- EXIF orientation ---------------------------------------------------------------------------


def _with_orientation(img: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    params = {"quality": 95} if fmt == "JPEG" else {}
    return encode(img, fmt, exif=exif.tobytes(), **params)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_6_rotates_pixels_and_swaps_size(fmt):
    """Orientation 6 means "rotate 90° clockwise to display": the stored top-left corner
    ends up top-right, and the reported width/height are the displayed ones."""
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))  # top-left corner of the stored pixels
    decoded = decode_image(_with_orientation(stored, 6, fmt))
    assert decoded.image.size == (20, 40)
    assert (decoded.width, decoded.height) == (20, 40)
    assert_colour(decoded.image.getpixel((17, 2)), RED)  # now top-right
    assert_colour(decoded.image.getpixel((2, 2)), BLUE)  # top-left is no longer red
    assert_colour(decoded.image.getpixel((2, 37)), BLUE)


def test_exif_orientation_on_a_real_photo_matches_numpy_rotation():
    coffee = photo("coffee")  # 400 x 600
    decoded = decode_image(_with_orientation(Image.fromarray(coffee), 6))
    expected = np.rot90(coffee, k=-1)  # 90° clockwise
    assert (decoded.width, decoded.height) == (400, 600)
    assert decoded.image.size == (400, 600)
    assert np.abs(pixels(decoded) - expected.astype(np.int16)).mean() < 4


def test_exif_orientation_1_and_3_keep_the_size():
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))
    upright = decode_image(_with_orientation(stored, 1))
    upside_down = decode_image(_with_orientation(stored, 3))  # rotate 180°
    for decoded in (upright, upside_down):
        assert decoded.image.size == (40, 20)
        assert (decoded.width, decoded.height) == (40, 20)
    assert_colour(upright.image.getpixel((2, 2)), RED)
    assert_colour(upside_down.image.getpixel((37, 17)), RED)


# -- colour modes --------------------------------------------------------------------------------


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (20, 10), 0)
    img.putpalette([*RED, *GREEN] + [0] * (256 - 2) * 3)
    img.paste(1, (10, 0, 20, 10))  # right half is palette entry 1 (green)
    data = encode(img, "PNG", transparency=0)  # palette entry 0 (red) is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    decoded = load_image_file(write(tmp_path, "palette.png", data))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((2, 5)) == WHITE  # transparent red shows the white background
    assert decoded.image.getpixel((15, 5)) == GREEN


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_is_composited_on_white(fmt):
    img = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 255, 255), (10, 0, 15, 10))  # opaque blue
    img.paste((0, 0, 255, 128), (15, 0, 20, 10))  # half-transparent blue
    params = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(encode(img, fmt, **params))
    assert decoded.image.mode == "RGB"
    assert_colour(decoded.image.getpixel((2, 5)), WHITE, tol=1)
    assert_colour(decoded.image.getpixel((12, 5)), BLUE, tol=1)
    assert_colour(decoded.image.getpixel((17, 5)), (127, 127, 255), tol=2)


def test_grey_with_alpha_is_composited_on_white():
    img = Image.new("LA", (10, 10), (0, 0))  # transparent black
    img.paste((0, 255), (5, 0, 10, 10))  # opaque black
    decoded = decode_image(encode(img, "PNG"))
    assert decoded.image.getpixel((2, 2)) == WHITE
    assert decoded.image.getpixel((7, 2)) == (0, 0, 0)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # no cyan, full M+Y: red
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = load_image_file(write(tmp_path, "print.jpg", data))
    assert decoded.image.mode == "RGB"
    assert_colour(decoded.image.getpixel((8, 8)), RED, tol=8)


def test_greyscale_jpeg_becomes_rgb():
    decoded = decode_image(encode(Image.new("L", (8, 8), 100), "JPEG"))
    assert decoded.image.mode == "RGB"
    assert_colour(decoded.image.getpixel((4, 4)), (100, 100, 100), tol=2)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_to_8_bit(fmt):
    """16-bit values map over the full range: 0 -> 0, 32768 -> ~128, 65535 -> 255."""
    values = np.full((10, 30), 32768, dtype=np.uint16)
    values[:, :10] = 0
    values[:, 20:] = 65535
    data = encode(Image.fromarray(values), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    decoded = decode_image(data)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((2, 5)) == (0, 0, 0)
    assert_colour(decoded.image.getpixel((15, 5)), (128, 128, 128), tol=1)
    assert decoded.image.getpixel((25, 5)) == (255, 255, 255)


def test_uniform_16_bit_mid_grey_is_not_stretched():
    """A flat 16-bit image keeps its level (no min-max stretch to black)."""
    data = encode(Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), "PNG")
    assert_colour(decode_image(data).image.getpixel((4, 4)), (128, 128, 128), tol=1)


def test_float_tiff_is_stretched_to_8_bit():
    values = np.zeros((4, 3), dtype=np.float32)
    values[:, 1], values[:, 2] = 0.5, 1.0
    decoded = decode_image(encode(Image.fromarray(values, mode="F"), "TIFF"))
    assert decoded.image.mode == "RGB"
    assert [decoded.image.getpixel((x, 1))[0] for x in range(3)] == [0, 128, 255]


# -- JPEG draft mode --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A real photograph enlarged to 2000x1500 and saved as JPEG."""
    return encode(Image.fromarray(photo("rocket")).resize((2000, 1500)), "JPEG", quality=90)


def test_draft_mode_decodes_big_jpeg_smaller_but_not_below_draft_size(big_jpeg):
    decoded = decode_image(big_jpeg, draft_size=224)
    w, h = decoded.image.size
    assert w < 2000 and h < 1500
    assert min(w, h) >= 224
    assert (w, h) == (500, 375)  # the smallest DCT scale (1/4) that keeps both sides >= 224
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (2000, 1500)  # the original's size


def test_draft_mode_picture_matches_a_downscaled_full_decode(big_jpeg):
    drafted = decode_image(big_jpeg, draft_size=224).image
    full = decode_image(big_jpeg)
    assert full.image.size == (2000, 1500)
    reference = full.image.resize(drafted.size, Image.Resampling.BOX)
    diff = np.abs(np.asarray(drafted).astype(np.int16) - np.asarray(reference).astype(np.int16)).mean()
    assert diff < 6


def test_draft_mode_with_exif_rotation_reports_displayed_original_size(big_jpeg):
    rotated = _with_orientation(Image.open(io.BytesIO(big_jpeg)), 6)
    decoded = decode_image(rotated, draft_size=224)
    assert (decoded.width, decoded.height) == (1500, 2000)
    assert decoded.image.size == (375, 500)


def test_draft_size_does_not_shrink_non_jpeg_formats():
    data = encode(Image.new("RGB", (1000, 800), RED), "PNG")
    decoded = decode_image(data, draft_size=224)
    assert decoded.image.size == (1000, 800)


# -- limits ------------------------------------------------------------------------------------------


def test_file_over_max_file_bytes_is_refused_before_decoding(tmp_path, chelsea):
    path = write(tmp_path, "cat.jpg", encode(Image.fromarray(chelsea), "JPEG"))
    size = path.stat().st_size
    with pytest.raises(ImageReadError, match=rf"file is {size} bytes, over the 1000-byte cap"):
        load_image_file(path, DecodeLimits(max_file_bytes=1000))
    # exactly at the cap is fine
    assert load_image_file(path, DecodeLimits(max_file_bytes=size)).image.size == (451, 300)


def test_read_file_returns_bytes_size_and_mtime(tmp_path):
    path = write(tmp_path, "x.bin", b"12345")
    got = read_file(path, DecodeLimits())
    assert (got.data, got.size, got.mtime_ns) == (b"12345", 5, path.stat().st_mtime_ns)


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """400 megapixels of 1-bit PNG: tiny on disk, over a gigabyte once decoded to RGB."""
    return encode(Image.new("1", (20000, 20000)), "PNG")


def test_decompression_bomb_is_refused(tmp_path, bomb_png):
    assert len(bomb_png) < 200_000
    path = write(tmp_path, "bomb.png", bomb_png)
    for limits in (DecodeLimits(), DecodeLimits(max_pixels=1_000_000)):
        with pytest.raises(ImageReadError, match=r"decompression bomb|pixel cap") as err:
            load_image_file(path, limits)
        assert "400000000" in str(err.value) or "20000x20000" in str(err.value)


def test_pixel_cap_from_decode_limits_is_enforced():
    data = encode(Image.new("1", (3000, 2000)), "PNG")
    with pytest.raises(ImageReadError, match=r"3000x2000 pixels, over the 1000000-pixel cap"):
        decode_image(data, DecodeLimits(max_pixels=1_000_000))
    assert decode_image(data, DecodeLimits(max_pixels=6_000_000)).image.size == (3000, 2000)


def test_image_under_the_pixel_cap_but_over_pillows_default_is_decoded():
    data = encode(Image.new("L", (10000, 9000)), "JPEG")  # 90 MP, under the 100 MP default cap
    decoded = decode_image(data, DecodeLimits(), draft_size=224)
    assert (decoded.width, decoded.height) == (10000, 9000)


# -- broken and hostile files -----------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(photo("astronaut")), "JPEG")
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = encode(Image.fromarray(photo("astronaut")), "PNG")
    return data[: len(data) // 2]


BAD_FILES = {
    "truncated-jpeg": ("cut.jpg", _truncated_jpeg),
    "truncated-png": ("cut.png", _truncated_png),
    "jpeg-header-only": ("head.jpg", lambda: encode(Image.new("RGB", (64, 64)), "JPEG")[:20]),
    "zero-bytes": ("empty.jpg", lambda: b""),
    "text-as-jpg": ("notes.jpg", lambda: b"just some text, not a picture\n" * 10),
    "svg-as-png": (
        "logo.png",
        lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10" fill="red"/></svg>',
    ),
    "html-as-png": ("page.png", lambda: b"<!DOCTYPE html><html><body><img src=x.png></body></html>"),
    "random-bytes": ("noise.webp", lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    "pcx-as-png": ("other.png", lambda: encode(Image.new("RGB", (8, 8)), "PCX")),  # a format Loupe does not take
}


@pytest.mark.parametrize("name,make", BAD_FILES.values(), ids=list(BAD_FILES))
def test_bad_files_raise_image_read_error_only(tmp_path, name, make):
    """Broken or disguised files raise ImageReadError (never another type) with a one-line message."""
    path = write(tmp_path, name, make())
    with pytest.raises(ImageReadError) as err:
        load_image_file(path)
    assert str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ImageReadError):
        decode_image(path.read_bytes())


def test_zero_byte_file_says_it_is_empty(tmp_path):
    with pytest.raises(ImageReadError, match="empty"):
        load_image_file(write(tmp_path, "empty.jpg", b""))


def test_truncated_jpeg_says_it_is_truncated():
    with pytest.raises(ImageReadError, match="truncated"):
        decode_image(_truncated_jpeg())


@pytest.mark.parametrize("key", ["text-as-jpg", "svg-as-png", "html-as-png", "pcx-as-png"])
def test_non_image_content_says_it_is_not_a_supported_image(key):
    _, make = BAD_FILES[key]
    with pytest.raises(ImageReadError, match="not a supported image"):
        decode_image(make())


def test_missing_file_and_folder_raise_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="cannot read file"):
        load_image_file(tmp_path / "nope.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageReadError, match="cannot read file"):
        load_image_file(tmp_path / "folder.jpg")


# -- iter_image_files ---------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    """A photo folder with subfolders, hidden entries, non-images, a data folder and a symlink.

    Files are created out of order so the walk's order cannot come from creation order.
    """
    root = tmp_path / "photos"
    png = encode(Image.new("RGB", (4, 4), RED), "PNG")
    for rel in [
        "z.webp",
        "sub/deep/e.bmp",
        "b.jpg",
        "sub/d.gif",
        "a.png",
        "c.TIFF",  # suffixes are case-insensitive
        "notes.txt",
        "raw.cr2",
        ".hidden.jpg",
        ".cache/thumb.jpg",
        "sub/.secret/f.png",
        "loupe-data/thumbs/g.png",
    ]:
        write(root, rel, png)
    outside = tmp_path / "elsewhere"
    write(outside, "h.jpg", png)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    return root


def test_walks_recursively_in_a_stable_sorted_order(tree):
    """Each folder's files in name order, then its subfolders (also in name order)."""
    got = list(iter_image_files([tree], exclude=tree / "loupe-data"))
    assert got == [
        tree / "a.png",
        tree / "b.jpg",
        tree / "c.TIFF",
        tree / "z.webp",
        tree / "sub" / "d.gif",
        tree / "sub" / "deep" / "e.bmp",
    ]
    assert all(isinstance(p, Path) and p.is_absolute() for p in got)
    assert list(iter_image_files([tree], exclude=tree / "loupe-data")) == got  # repeatable


def test_hidden_files_and_folders_are_skipped(tree):
    names = {p.name for p in iter_image_files([tree])}
    assert ".hidden.jpg" not in names
    assert "thumb.jpg" not in names  # inside .cache/
    assert "f.png" not in names  # inside sub/.secret/


def test_non_image_suffixes_skipped_in_folders_but_named_files_yielded(tree):
    names = {p.name for p in iter_image_files([tree])}
    assert "notes.txt" not in names and "raw.cr2" not in names
    named = [tree / "notes.txt", tree / ".hidden.jpg", tree / "raw.cr2"]
    assert list(iter_image_files(named)) == named


def test_exclude_folder_is_skipped_with_everything_under_it(tree):
    assert "g.png" in {p.name for p in iter_image_files([tree])}
    assert "g.png" not in {p.name for p in iter_image_files([tree], exclude=tree / "loupe-data")}
    assert list(iter_image_files([tree / "loupe-data"], exclude=tree / "loupe-data")) == []


def test_relative_paths_give_absolute_results_and_relative_exclude_works(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    got = list(iter_image_files([Path("photos")], exclude=Path("photos/loupe-data")))
    assert tree / "a.png" in got
    assert all(p.is_absolute() for p in got)
    assert not any("loupe-data" in p.parts for p in got)


def test_exclude_given_with_dotdot_is_still_skipped(tree):
    exclude = tree / "sub" / ".." / "loupe-data"
    assert "g.png" not in {p.name for p in iter_image_files([tree], exclude=exclude)}


def test_symlinked_folders_are_not_followed(tree):
    got = list(iter_image_files([tree]))
    assert not any("linked" in p.parts for p in got)
    assert "h.jpg" not in {p.name for p in got}


def test_several_roots_are_walked_in_the_given_order(tree):
    got = list(iter_image_files([tree / "sub", tree / "a.png"]))
    assert got == [tree / "sub" / "d.gif", tree / "sub" / "deep" / "e.bmp", tree / "a.png"]


# -- content hash ------------------------------------------------------------------------------------


def test_content_hash_is_sha256_hex_and_stable():
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = os.urandom(1000)
    assert content_hash(data) == content_hash(bytes(data)) == hashlib.sha256(data).hexdigest()
    assert content_hash(data) != content_hash(data + b"\0")


def test_decoded_image_hash_is_the_file_bytes_hash(tmp_path, chelsea):
    data = encode(Image.fromarray(chelsea), "PNG")
    path = write(tmp_path, "cat.png", data)
    first, second = load_image_file(path), decode_image(data)
    assert first.sha256 == second.sha256 == content_hash(data)
    reencoded = decode_image(encode(Image.fromarray(chelsea), "PNG", compress_level=1))
    assert reencoded.sha256 != first.sha256  # same pixels, different bytes: a different hash
