"""A picture's metadata for the library: when it was taken, the camera, orientation, GPS.

`read_metadata` is a pure function of a picture's EXIF block (as Pillow parses it from the file
header, without decoding pixels) and the file's modification time. It never raises: a missing,
broken or malformed EXIF block, or a field that does not parse, is ignored field by field, and a
picture without a usable date is filed by its file time (`taken_source` "file").

Dates: EXIF `DateTimeOriginal` (with `SubSecTimeOriginal`) is a wall-clock time. With
`OffsetTimeOriginal` it is converted to a UTC instant and the offset is kept in minutes; without
an offset (most older cameras) the wall time is read as if it were UTC and `taken_offset_min` is
null, so such pictures sort among themselves by their wall time, and the API says the offset is
unknown. `DateTime` (IFD0, the last edit) is not used: it is not when the picture was taken.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import PurePath
from typing import Any, Mapping

METADATA_VERSION = 1  # rows read by this module carry it; null rows are backfilled by `loupe index`

# EXIF tags (IFD0, the Exif IFD and the GPS IFD)
TAG_MAKE = 0x010F
TAG_MODEL = 0x0110
TAG_ORIENTATION = 0x0112
TAG_EXIF_IFD = 0x8769
TAG_GPS_IFD = 0x8825
TAG_DATETIME_ORIGINAL = 0x9003
TAG_OFFSET_TIME_ORIGINAL = 0x9011
TAG_SUBSEC_TIME_ORIGINAL = 0x9291
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4

TEXT_LIMIT = 64  # the catalog's camera_make / camera_model width
MAX_OFFSET_MIN = 14 * 60  # UTC-12:00 .. UTC+14:00, with some slack
YEARS = (1800, 2200)  # a DateTimeOriginal outside these years is a broken clock, not a date

_DATE = re.compile(r"\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"\s*([+\-])(\d{2}):?(\d{2})\s*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class PictureMetadata:
    """What the catalog records of one picture besides its pixels (see `indexer.catalog`)."""

    taken_at: datetime | None  # a UTC instant (tz-aware); None only for an impossible file time
    taken_source: str | None  # "exif" or "file"
    taken_offset_min: int | None = None  # the EXIF offset from UTC in minutes, when the file gives it
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int | None = None  # EXIF orientation 1-8, None when absent or invalid
    has_gps: bool = False  # the picture records a position (GPS latitude and longitude)
    gps_lat: float | None = None  # decimal degrees, only when asked to keep them
    gps_lon: float | None = None
    version: int = METADATA_VERSION

    def columns(self) -> dict[str, Any]:
        """The `ImageRecord` columns this fills, `metadata_version` included."""
        return {
            "taken_at": self.taken_at, "taken_source": self.taken_source, "taken_offset_min": self.taken_offset_min,
            "camera_make": self.camera_make, "camera_model": self.camera_model, "orientation": self.orientation,
            "has_gps": self.has_gps, "gps_lat": self.gps_lat, "gps_lon": self.gps_lon,
            "metadata_version": self.version,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the date as ISO 8601), as part files and Ray rows carry them."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["taken_at"] = self.taken_at.isoformat() if self.taken_at is not None else None
        return fields

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any] | None) -> "PictureMetadata | None":
        """The inverse of `as_dict` (None for None or anything malformed)."""
        if not isinstance(fields, Mapping):
            return None
        try:
            taken_at = fields.get("taken_at")
            return cls(**{**fields, "taken_at": as_utc(datetime.fromisoformat(taken_at)) if taken_at else None})
        except (TypeError, ValueError):
            return None


def read_metadata(exif: Mapping | None, mtime_ns: int, keep_gps: bool = False,
                  original_orientation: int | None = None) -> PictureMetadata:
    """The metadata of a picture whose EXIF block is `exif` (a Pillow `Image.Exif`, from
    `image.getexif()`, or None) and whose file was last modified at `mtime_ns` (`os.stat`'s
    `st_mtime_ns`). GPS coordinates are converted to decimal degrees only when `keep_gps`.
    `original_orientation` (pillow-heif's `info["original_orientation"]`: libheif rotates HEIF
    pixels itself and resets the EXIF tag to 1) wins over the EXIF tag when valid."""
    exif = exif if exif is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt EXIF: broken input is expected
        exif_ifd, gps_ifd = _ifd(exif, TAG_EXIF_IFD), _ifd(exif, TAG_GPS_IFD)
    taken = _exif_taken(exif, exif_ifd)
    if taken is not None:
        taken_at, taken_source, offset = taken[0], "exif", taken[1]
    else:
        taken_at, taken_source, offset = file_time(mtime_ns), "file", None
        if taken_at is None:
            taken_source = None
    position = _gps_position(gps_ifd)
    return PictureMetadata(
        taken_at=taken_at,
        taken_source=taken_source,
        taken_offset_min=offset,
        camera_make=_text(_get(exif, TAG_MAKE)),
        camera_model=_text(_get(exif, TAG_MODEL)),
        orientation=_orientation(original_orientation) or _orientation(_get(exif, TAG_ORIENTATION)),
        has_gps=position is not None,
        gps_lat=position[0] if position is not None and keep_gps else None,
        gps_lon=position[1] if position is not None and keep_gps else None,
    )


def metadata_of_image(image, mtime_ns: int, keep_gps: bool = False) -> PictureMetadata:
    """`read_metadata` of an open Pillow image (its header is enough: no pixel is decoded)."""
    return read_metadata(exif_of(image), mtime_ns, keep_gps, _get(image.info, "original_orientation"))


def exif_of(image) -> Mapping | None:
    """The image's parsed EXIF block, or None when it is absent or Pillow cannot parse it."""
    try:
        return image.getexif()
    except Exception:  # broken EXIF blocks are ignored, never fatal
        return None


def folder_of(path: str) -> str:
    """The absolute parent folder of `path`, POSIX-style and without a trailing slash (`/` for
    the root), as the catalog's `folder` column holds it."""
    return PurePath(path).parent.as_posix()


def file_time(mtime_ns: int) -> datetime | None:
    """A file's modification time as a UTC instant (None when it is out of datetime's range)."""
    try:
        return _EPOCH + timedelta(microseconds=int(mtime_ns) // 1000)
    except (OverflowError, ValueError, TypeError):
        return None


def as_utc(value: datetime | None) -> datetime | None:
    """A catalog datetime as a tz-aware UTC instant (SQLite returns the stored UTC time naive)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# -- fields --------------------------------------------------------------------------------------
def _get(mapping: Mapping, tag: int) -> Any:
    try:
        return mapping.get(tag)
    except Exception:  # a hostile block can fail on access
        return None


def _ifd(exif: Mapping, tag: int) -> Mapping:
    """A sub-IFD (Exif, GPS) of `exif`, or an empty mapping."""
    try:
        found = exif.get_ifd(tag) if hasattr(exif, "get_ifd") else exif.get(tag)
    except Exception:  # a broken offset or a truncated block
        return {}
    return found if isinstance(found, Mapping) else {}


def _exif_taken(exif: Mapping, exif_ifd: Mapping) -> tuple[datetime, int | None] | None:
    """(UTC instant, offset minutes or None) from DateTimeOriginal, or None when unusable.
    Some writers put DateTimeOriginal in IFD0 rather than the Exif IFD: both are looked at."""
    raw = _get(exif_ifd, TAG_DATETIME_ORIGINAL) or _get(exif, TAG_DATETIME_ORIGINAL)
    wall = _wall_time(_text(raw, limit=None), _text(_get(exif_ifd, TAG_SUBSEC_TIME_ORIGINAL), limit=None))
    if wall is None:
        return None
    offset = _offset_minutes(_text(_get(exif_ifd, TAG_OFFSET_TIME_ORIGINAL), limit=None))
    try:
        instant = wall - timedelta(minutes=offset or 0)
        return instant.replace(tzinfo=timezone.utc), offset
    except OverflowError:
        return None


def _wall_time(text: str | None, subsec: str | None) -> datetime | None:
    match = _DATE.match(text or "")
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups())
    if not YEARS[0] <= year <= YEARS[1]:
        return None
    try:
        wall = datetime(year, month, day, hour, minute, second)
    except ValueError:  # 0000:00:00, the 31st of February, hour 24
        return None
    digits = re.match(r"\d+", (subsec or "").strip())
    if digits:
        wall += timedelta(microseconds=int(digits.group()[:6].ljust(6, "0")))
    return wall


def _offset_minutes(text: str | None) -> int | None:
    match = _OFFSET.match(text or "")
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    total = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or total > MAX_OFFSET_MIN:
        return None
    return -total if sign == "-" else total


def _text(value: Any, limit: int | None = TEXT_LIMIT) -> str | None:
    """An EXIF ASCII value as clean text: cut at the first NUL, control characters dropped,
    whitespace stripped, at most `limit` characters; None when empty or not text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = value.split("\x00", 1)[0]
    value = "".join(ch for ch in value if ch.isprintable()).strip()
    if limit is not None:
        value = value[:limit].rstrip()
    return value or None


def _orientation(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8 else None


def _gps_position(gps: Mapping) -> tuple[float, float] | None:
    """(latitude, longitude) in decimal degrees, or None when the GPS IFD holds no valid position."""
    lat = _degrees(_get(gps, GPS_LAT), _get(gps, GPS_LAT_REF), "S")
    lon = _degrees(_get(gps, GPS_LON), _get(gps, GPS_LON_REF), "W")
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    return lat, lon


def _degrees(value: Any, ref: Any, negative: str) -> float | None:
    """Degrees, minutes, seconds (EXIF rationals) as signed decimal degrees."""
    try:
        parts = [float(part) for part in value]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    degrees = sum(part / 60**i for i, part in enumerate(parts))
    ref = _text(ref, limit=None)
    return -degrees if ref is not None and ref.upper().startswith(negative) else degrees
