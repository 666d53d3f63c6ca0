"""Finding image files and decoding them safely into RGB pictures."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # MPO files open as JPEG
# EXIF orientations 5-8 swap width and height.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class DecodeLimits:
    """Caps that protect a job from huge files and decompression bombs."""

    max_file_bytes: int = 100 * 1024 * 1024
    max_pixels: int = 100_000_000


@dataclass(frozen=True)
class DecodedImage:
    """A decoded picture (RGB, possibly reduced by JPEG draft mode) and its source facts."""

    image: Image.Image
    width: int  # of the original, after EXIF orientation
    height: int
    format: str
    sha256: str


def iter_image_files(paths: Iterable[Path], exclude: Path | None = None,
                     link_roots: Iterable[Path] | None = None) -> Iterator[Path]:
    """Yield absolute paths of image files under `paths`, folders walked recursively in a
    stable order (each folder's files by name, then its subfolders by name).

    A path named explicitly is yielded whatever its suffix; inside folders only image suffixes
    count, hidden files and folders are skipped, symlinked folders are not followed, anything
    under `exclude` (Loupe's own data folder, recognised by device and inode however it is
    spelled) is left out, and, with `link_roots`, a symlinked file is yielded only when its
    target lies inside one of them (real paths).
    """
    from .roots import inside, real

    excluded = DataFolder.of(exclude)
    targets = tuple(real(root) for root in link_roots) if link_roots is not None else None
    for given in paths:
        root = Path(os.path.abspath(given))
        if root.is_file():
            yield root
            continue
        for folder, dirnames, filenames in os.walk(root):
            here = Path(folder)
            if excluded.holds(here):
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                path = here / name
                if targets is not None and os.path.islink(path) and not inside(real(path), targets):
                    continue
                yield path


@dataclass(frozen=True)
class DataFolder:
    """Loupe's data folder as a walk must recognise it: by path, and by device and inode (a
    root may reach it through another spelling: a symlink, a bind mount)."""

    path: Path | None = None
    key: tuple[int, int] | None = None

    @classmethod
    def of(cls, folder: Path | None) -> "DataFolder":
        if folder is None:
            return cls()
        path = Path(os.path.abspath(folder))
        try:
            stat = os.stat(path)
            return cls(path, (stat.st_dev, stat.st_ino))
        except OSError:
            return cls(path)

    def holds(self, folder: Path) -> bool:
        """Whether `folder` is the data folder or lies inside it."""
        if self.path is None:
            return False
        if folder == self.path or self.path in folder.parents:
            return True
        if self.key is None:
            return False
        try:
            stat = os.stat(folder)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self.key


def walk_reaches(path: Path, root: Path, excluded: DataFolder, folders: dict | None = None) -> bool:
    """Whether walking `root` would look at `path`, so that its absence means the file has
    vanished: the root itself, or an image file below it with no hidden part, not inside the
    data folder and not behind a symlinked folder. `folders` caches verdicts per folder."""
    if path == root:
        return True
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return False
    folder = path.parent
    cache = folders if folders is not None else {}
    if folder not in cache:
        cache[folder] = _folder_reached(folder, root, excluded)
    return cache[folder]


def _folder_reached(folder: Path, root: Path, excluded: DataFolder) -> bool:
    try:
        below = folder.relative_to(root).parts
    except ValueError:
        return False
    if any(part.startswith(".") for part in below):
        return False
    current = folder
    for _ in range(len(below) + 1):
        if excluded.holds(current) or (current != root and current.is_symlink()):
            return False
        current = current.parent
    return True


@dataclass(frozen=True)
class FileBytes:
    data: bytes
    size: int
    mtime_ns: int


def read_file(path: Path, limits: DecodeLimits) -> FileBytes:
    """The file's bytes and stat, refusing files over the size cap before reading them, and
    anything but a regular file (opened without blocking: a FIFO named `*.jpg` cannot hang a job)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ImageReadError(f"cannot read file: {err.strerror or err}") from err
    with os.fdopen(fd, "rb") as fh:
        return read_open_file(fh, limits)


def read_open_file(fh: BinaryIO, limits: DecodeLimits) -> FileBytes:
    """The bytes of an open file (see `read_file`)."""
    try:
        stat = os.fstat(fh.fileno())
        if not S_ISREG(stat.st_mode):
            raise ImageReadError("not a regular file")
        if stat.st_size > limits.max_file_bytes:
            raise ImageReadError(f"file is {stat.st_size} bytes, over the {limits.max_file_bytes}-byte cap")
        if stat.st_size == 0:
            raise ImageReadError("file is empty")
        data = fh.read(limits.max_file_bytes + 1)
    except OSError as err:
        raise ImageReadError(f"cannot read file: {err.strerror or err}") from err
    if len(data) > limits.max_file_bytes:
        raise ImageReadError(f"file grew past the {limits.max_file_bytes}-byte cap while being read")
    return FileBytes(data, stat.st_size, stat.st_mtime_ns)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits(), draft_size: int | None = None) -> DecodedImage:
    """Decode image bytes into an RGB picture.

    EXIF orientation is applied; palette, alpha, CMYK, greyscale and 16-bit images become
    8-bit RGB (transparency composited on white); animated images give their first frame.
    With `draft_size`, JPEGs are decoded at the smallest DCT scale that keeps both sides at
    least that large, which is several times faster for big photos.
    """
    try:
        with warnings.catch_warnings():
            # Loupe's own pixel cap is checked below, before any pixel is decoded; Pillow's
            # warning is redundant (its hard error, at 2x MAX_IMAGE_PIXELS, still applies).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt EXIF: broken input is expected
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
            fmt = img.format or "unknown"
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageReadError(f"image has no pixels ({width}x{height})")
            if width * height > limits.max_pixels:
                raise ImageReadError(
                    f"image is {width}x{height} pixels, over the {limits.max_pixels}-pixel cap"
                )
            orientation = _exif_orientation(img)
            if orientation in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            if draft_size and fmt in ("JPEG", "MPO"):
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"refused as a decompression bomb: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageReadError("not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF)") from err
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise ImageReadError(f"corrupt or truncated image: {err}") from err
    except Exception as err:  # Pillow plugins raise assorted errors on hostile input
        raise ImageReadError(f"cannot decode image: {type(err).__name__}: {err}") from err
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, sha256=content_hash(data))


def load_image_file(path: Path, limits: DecodeLimits = DecodeLimits(), draft_size: int | None = None) -> DecodedImage:
    """Read and decode one file (see `decode_image`)."""
    return decode_image(read_file(path, limits).data, limits, draft_size)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float greyscale to 8 bits (full range for 16-bit)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        scaled = arr / 257.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return grey.convert("RGB")


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # broken EXIF blocks are ignored, not fatal
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None
