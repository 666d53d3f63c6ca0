"""Finding image files and decoding them safely into RGB pictures."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DecodeBusyError, ImageReadError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                            ".heic", ".heif"})
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # MPO files open as JPEG
HEIF_FORMAT = "HEIF"  # phone photos (HEIC/HEIF), through pillow-heif when it is installed
EXIF_ORIENTATION = 0x0112  # the EXIF tag of a picture's display orientation (1-8)
TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # orientations that swap width and height


@dataclass(frozen=True)
class DecodeLimits:
    """Caps that protect a job from huge files, decompression bombs and costly pixel modes.

    `max_decode_bytes` bounds the memory one decode may take (see `decode_cost`), checked
    before any pixel is decoded; None allows 10 bytes a pixel at the pixel cap (enough for
    every mode but float and 32-bit greyscale, which need 9.4, at the cap). `wait_seconds` bounds how long a decode waits for one of the
    process's decode slots (None: as long as it takes, as bulk jobs do)."""

    max_file_bytes: int = 100 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_decode_bytes: int | None = None
    wait_seconds: float | None = None

    @property
    def decode_budget(self) -> int:
        return self.max_decode_bytes if self.max_decode_bytes is not None else 10 * self.max_pixels


# Bytes a pixel takes in each Pillow mode as Pillow stores it (bands × bit depth, with 3-band
# pictures padded to 4 bytes); anything not listed is counted at 4.
STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_HIGH_DEPTH = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_STRIP_ROWS = 128  # rows converted at a time where a conversion needs working copies
_STRIP_BYTES = 24  # their bytes per pixel at most (crop, conversion, composite, float32 rows)
DEFAULT_DECODE_SLOTS = 4
NOT_REGULAR = "cannot read file: not a regular file"


def decode_cost(mode: str, width: int, height: int, transposed: bool = False) -> int:
    """The memory, in bytes, that decoding a `mode` picture of `width` × `height` pixels to RGB
    takes at its peak: the decoded pixels, the RGB result (unless the picture is RGB already),
    the 8-bit plane of a high-depth picture, and a copy for an EXIF rotation. Measured against
    the real peak in tests/test_security.py."""
    pixels = width * height
    stored = STORED_BYTES.get(mode, 4)
    cost = pixels * stored
    if mode != "RGB":
        cost += pixels * 4 + (pixels if mode in _HIGH_DEPTH else 0)
        cost += min(height, _STRIP_ROWS) * width * _STRIP_BYTES  # one strip's working copies
    if transposed:
        cost += pixels * stored
    return cost


class _DecodeSlots:
    """A process-wide semaphore: at most `slots` decodes hold their memory at once."""

    def __init__(self, slots: int):
        self.slots = slots
        self.semaphore = threading.BoundedSemaphore(slots)


_slots: _DecodeSlots | None = None
_slots_lock = threading.Lock()


def decode_slots() -> _DecodeSlots:
    global _slots
    if _slots is None:
        with _slots_lock:
            if _slots is None:
                _slots = _DecodeSlots(DEFAULT_DECODE_SLOTS)
    return _slots


def set_decode_slots(slots: int) -> None:
    """How many decodes this process runs at once (the server sets it from its config)."""
    global _slots
    if slots < 1:
        raise ValueError("decode slots must be at least 1")
    with _slots_lock:
        if _slots is None or _slots.slots != slots:
            _slots = _DecodeSlots(slots)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded picture (RGB, possibly reduced by JPEG draft mode) and its source facts."""

    image: Image.Image
    width: int  # of the original, after EXIF orientation
    height: int
    format: str
    sha256: str
    exif: Image.Exif | None = field(default=None, compare=False, repr=False)  # parsed from the header
    original_orientation: int | None = None  # HEIF: the orientation libheif applied (EXIF then says 1)


_heif_lock = threading.Lock()
_heif_registered: bool | None = None  # None: not tried yet


def register_heif() -> bool:
    """Teach Pillow to open HEIC/HEIF (pillow-heif), once per process, on the first decode
    rather than at import. Thumbnails, depth and auxiliary images inside the file are not
    decoded (only the primary picture is), and libheif's own security limits stay on. False
    when pillow-heif is not installed: such files are then refused as unsupported."""
    global _heif_registered
    if _heif_registered is None:
        with _heif_lock:
            if _heif_registered is None:
                try:
                    import pillow_heif
                except ImportError:
                    _heif_registered = False
                else:
                    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
                    _heif_registered = True
    return _heif_registered


def pillow_formats() -> tuple[str, ...]:
    """The Pillow formats Loupe opens (HEIF once `register_heif` has registered it)."""
    return _PIL_FORMATS + ((HEIF_FORMAT,) if register_heif() else ())


def open_header(source: bytes | BinaryIO) -> Image.Image:
    """Open image bytes or an open file lazily: Pillow parses the header (size, mode, EXIF) and
    decodes no pixel (from a file, a JPEG's markers before its first scan are all it reads).
    Raises what `Image.open` raises (UnidentifiedImageError, DecompressionBombError, OSError...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt EXIF
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        return Image.open(fp, formats=pillow_formats())


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
    if not S_ISREG(os.fstat(fd).st_mode):  # a folder, FIFO or device: never read
        os.close(fd)
        raise ImageReadError(NOT_REGULAR)
    with os.fdopen(fd, "rb") as fh:
        return read_open_file(fh, limits)


def open_regular_file(path: Path, limits: DecodeLimits) -> tuple[BinaryIO, os.stat_result]:
    """The open file at `path` and its stat, with `read_file`'s checks (a regular file, opened
    without blocking, within the size cap, not empty) but nothing read: for header-only reads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ImageReadError(f"cannot read file: {err.strerror or err}") from err
    fh = os.fdopen(fd, "rb")
    try:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise ImageReadError(NOT_REGULAR)
        if stat.st_size > limits.max_file_bytes:
            raise ImageReadError(f"file is {stat.st_size} bytes, over the {limits.max_file_bytes}-byte cap")
        if stat.st_size == 0:
            raise ImageReadError("file is empty")
    except BaseException:
        fh.close()
        raise
    return fh, stat


def read_open_file(fh: BinaryIO, limits: DecodeLimits) -> FileBytes:
    """The bytes of an open file (see `read_file`)."""
    try:
        stat = os.fstat(fh.fileno())
        if not S_ISREG(stat.st_mode):
            raise ImageReadError(NOT_REGULAR)
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
            img = Image.open(io.BytesIO(data), formats=pillow_formats())
            fmt = img.format or "unknown"
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageReadError(f"image has no pixels ({width}x{height})")
            if width * height > limits.max_pixels:
                raise ImageReadError(
                    f"image is {width}x{height} pixels, over the {limits.max_pixels}-pixel cap"
                )
            exif = _exif_or_none(img)
            original_orientation = img.info.get("original_orientation")
            orientation = _exif_orientation(img)
            if orientation in TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            if draft_size and fmt in ("JPEG", "MPO"):
                img.draft("RGB", (draft_size, draft_size))
            cost = decode_cost(img.mode, img.width, img.height, transposed=orientation not in (None, 1))
            if cost > limits.decode_budget:
                raise ImageReadError(
                    f"decoding this {img.width}x{img.height} {img.mode} image would take about {cost // 2**20} MB, "
                    f"over the {limits.decode_budget // 2**20} MB budget"
                )
            slots = decode_slots().semaphore
            if not slots.acquire(timeout=limits.wait_seconds):
                raise DecodeBusyError("too many pictures are being decoded at once; try again shortly")
            try:
                img.load()
                if orientation not in (None, 1):
                    img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
                del img  # the decoded source is dropped before the slot is given back
            finally:
                slots.release()
    except (ImageReadError, DecodeBusyError):
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"refused as a decompression bomb: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageReadError("not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC)") from err
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise ImageReadError(f"corrupt or truncated image: {err}") from err
    except Exception as err:  # Pillow plugins raise assorted errors on hostile input
        raise ImageReadError(f"cannot decode image: {type(err).__name__}: {err}") from err
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, sha256=content_hash(data),
                        exif=exif, original_orientation=original_orientation)


def load_image_file(path: Path, limits: DecodeLimits = DecodeLimits(), draft_size: int | None = None) -> DecodedImage:
    """Read and decode one file (see `decode_image`)."""
    return decode_image(read_file(path, limits).data, limits, draft_size)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, with no more than the RGB result and a strip of
    rows as working memory (see `decode_cost`)."""
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_DEPTH:
        return _high_depth_to_rgb(img)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return _composite_on_white(img)
    return img.convert("RGB")


def _strips(height: int):
    for top in range(0, height, _STRIP_ROWS):
        yield top, min(height, top + _STRIP_ROWS)


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Transparency composited on white, a strip of rows at a time (the same pixels as one
    `alpha_composite` of the whole picture, without its three full-size copies)."""
    out = Image.new("RGB", img.size)
    white = None
    for top, bottom in _strips(img.height):
        strip = img.crop((0, top, img.width, bottom)).convert("RGBA")
        if white is None or white.size != strip.size:
            white = Image.new("RGBA", strip.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(white, strip).convert("RGB"), (0, top))
    return out


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float greyscale to 8 bits (full range for 16-bit), a
    strip of rows at a time in integer or float32 arithmetic: no float64 copy of the picture."""
    plane = np.empty((img.height, img.width), dtype=np.uint8)
    if img.mode.startswith("I;16"):
        for top, bottom in _strips(img.height):
            rows = np.asarray(img.crop((0, top, img.width, bottom))).astype(np.uint32)
            plane[top:bottom] = (rows + 128) // 257  # round(v / 257): 0..65535 onto 0..255
    else:
        lo, hi = img.getextrema()
        scale = np.float32(255.0 / (hi - lo)) if hi > lo else np.float32(0.0)
        for top, bottom in _strips(img.height):
            rows = np.asarray(img.crop((0, top, img.width, bottom)), dtype=np.float32)
            plane[top:bottom] = np.clip(np.rint((rows - np.float32(lo)) * scale), 0, 255)
    return Image.frombuffer("L", (img.width, img.height), plane, "raw", "L", 0, 1).convert("RGB")


def _exif_or_none(img: Image.Image) -> Image.Exif | None:
    try:
        return img.getexif()
    except Exception:  # broken EXIF blocks are ignored, not fatal
        return None


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(EXIF_ORIENTATION)
    except Exception:  # broken EXIF blocks are ignored, not fatal
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None
