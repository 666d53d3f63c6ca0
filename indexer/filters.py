"""The library's search filters and sort orders as typed values, and their parsing.

`LibraryFilter` is what a search asks of the catalog (folder, date taken, format, size,
camera); `parse_filter` builds one from the strings a client sends (the HTTP API's
parameters, the CLI's options), refusing bad input with a `QueryError` that names the
parameter. `indexer.metatable` applies a filter to the library.

Semantics (docs/library.md says the same):
- `folder`: an absolute path; a picture matches when its folder is that folder or lies below
  it (whole path components: /photos/a does not match /photos/ab). Several: any of them.
- `taken_after`, `taken_before`: ISO dates (`2023`, `2023-07`, `2023-07-14`) or datetimes
  (`2023-07-14T18:30`, with `Z` or an offset; without one, UTC, which is how a picture's EXIF
  time without an offset is stored). Both bounds are inclusive: a date bound includes the
  whole year, month or day it names. Pictures with no date taken are left out by either; a
  range that ends before it starts matches nothing.
- `format`: the file format, case-insensitive (`jpeg`, `jpg`, `png`, `heic`...). Several: any.
- `min_width`, `min_height`: the picture's stored pixel size, at least this.
- `camera`: a case-insensitive substring of "make model" (`iphone`, `canon eos`); runs of
  blanks count as one space, and a blank value filters nothing. Several: any.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterable, Mapping, Sequence

from .errors import LoupeError

RELEVANCE = "relevance"
SORTS = (RELEVANCE, "taken", "-taken", "size")
# A sort other than relevance orders this many of the most relevant matches (or, with
# min_score, every match reaching it): a text search has no natural relevance floor, so "all
# matches by date" would list the whole library.
SORT_POOL = 1000
FILTER_NAMES = ("folder", "taken_after", "taken_before", "format", "min_width", "min_height", "camera")
MAX_FILTER_VALUES = 32  # values one repeatable filter may have
MAX_FILTER_TEXT = 1024  # characters in one filter value
MAX_DIMENSION = 1_000_000
FORMAT_ALIASES = {"JPG": "JPEG", "JPE": "JPEG", "TIF": "TIFF", "HEIC": "HEIF", "HEIFS": "HEIF", "HEICS": "HEIF"}
_FORMAT = re.compile(r"^[A-Za-z0-9]{1,16}$")
_YEAR = re.compile(r"^\d{4}$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_LEAP_SECOND = re.compile(r"(T\d{2}:\d{2}:)60")
_FIRST = datetime.min.replace(tzinfo=timezone.utc)
_LAST = datetime.max.replace(tzinfo=timezone.utc)


class QueryError(LoupeError, ValueError):
    """A search parameter that cannot be used; `param` names it (the API answers 400 with it)."""

    code = "bad_parameter"

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class LibraryFilter:
    """What a result must be, beyond similar: every given condition holds (values of one
    repeatable condition are alternatives). The empty filter admits every picture."""

    folders: tuple[str, ...] = ()
    taken_after: datetime | None = None  # inclusive, UTC
    taken_before: datetime | None = None  # inclusive, UTC
    formats: tuple[str, ...] = ()  # upper-case Pillow format names
    min_width: int | None = None
    min_height: int | None = None
    cameras: tuple[str, ...] = ()  # lower-case substrings of "make model"
    cluster: int | None = None  # a cluster of the collection's map (`indexer.collection_map`)

    @property
    def active(self) -> bool:
        return self != LibraryFilter()

    def key(self) -> str:
        """A canonical text of the filter (cursors bind to it)."""
        def when(value: datetime | None) -> str:
            return "" if value is None else value.isoformat()

        return "|".join((",".join(sorted(self.folders)), when(self.taken_after), when(self.taken_before),
                         ",".join(sorted(self.formats)), str(self.min_width or ""), str(self.min_height or ""),
                         ",".join(sorted(self.cameras)), "" if self.cluster is None else str(self.cluster)))

    def as_dict(self) -> dict:
        """The filter as the API's parameter names (given conditions only)."""
        body: dict = {}
        if self.folders:
            body["folder"] = list(self.folders)
        if self.taken_after is not None:
            body["taken_after"] = self.taken_after.isoformat()
        if self.taken_before is not None:
            body["taken_before"] = self.taken_before.isoformat()
        if self.formats:
            body["format"] = list(self.formats)
        if self.min_width is not None:
            body["min_width"] = self.min_width
        if self.min_height is not None:
            body["min_height"] = self.min_height
        if self.cameras:
            body["camera"] = list(self.cameras)
        if self.cluster is not None:
            body["cluster"] = self.cluster
        return body


def parse_filter(values: Mapping[str, Sequence]) -> LibraryFilter:
    """The filter that `values` (parameter name → the values given, strings or numbers) asks
    for; names other than FILTER_NAMES are not looked at (see `check_names`)."""
    def given(name: str) -> list:
        raw = list(values.get(name, ()))
        if len(raw) > MAX_FILTER_VALUES:  # blank values count: the limit is on what was sent
            raise QueryError(name, f"{name} is given {len(raw)} times; at most {MAX_FILTER_VALUES}")
        found = [v for v in raw if v is not None and v != ""]
        for value in found:
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise QueryError(name, f"{name} must be a string, not {value!r}")
            if len(str(value)) > MAX_FILTER_TEXT:
                raise QueryError(name, f"{name} is longer than {MAX_FILTER_TEXT} characters")
        return found

    def single(name: str):
        found = given(name)
        return found[0] if found else None

    after, before = single("taken_after"), single("taken_before")
    taken_after = parse_when("taken_after", after, end=False) if after is not None else None
    taken_before = parse_when("taken_before", before, end=True) if before is not None else None
    width, height = single("min_width"), single("min_height")
    return LibraryFilter(
        folders=tuple(dict.fromkeys(parse_folder(v) for v in given("folder"))),
        taken_after=taken_after,
        taken_before=taken_before,
        formats=tuple(dict.fromkeys(f for v in given("format") for f in parse_formats(str(v)))),
        min_width=parse_dimension("min_width", width) if width is not None else None,
        min_height=parse_dimension("min_height", height) if height is not None else None,
        cameras=tuple(dict.fromkeys(c for c in (parse_camera(v) for v in given("camera")) if c)),
    )


def parse_sort(raw) -> str:
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value not in SORTS:
        raise QueryError("sort", f"sort must be one of {', '.join(SORTS)}, not {raw!r}")
    return value


def parse_folder(raw) -> str:
    """An absolute folder, normalised (no trailing slash, no `.` or `..` parts)."""
    import posixpath

    text = str(raw).strip()
    if "\0" in text or not text.startswith("/"):
        raise QueryError("folder", f"folder must be an absolute path (starting with /), not {raw!r}")
    return posixpath.normpath(text).replace("//", "/")


def parse_formats(raw: str) -> list[str]:
    """Format names (comma-separated allowed), upper-cased, aliases resolved (jpg → JPEG)."""
    found = []
    for part in raw.split(","):
        name = part.strip().lstrip(".")
        if not _FORMAT.match(name):
            raise QueryError("format", f"format must be a format name such as jpeg, png or heic, not {raw!r}")
        found.append(FORMAT_ALIASES.get(name.upper(), name.upper()))
    return found


def parse_dimension(name: str, raw) -> int:
    try:
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        value = int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        raise QueryError(name, f"{name} must be a whole number of pixels, not {raw!r}") from None
    if not 1 <= value <= MAX_DIMENSION:
        raise QueryError(name, f"{name} must be between 1 and {MAX_DIMENSION}, not {value}")
    return value


def parse_camera(raw) -> str:
    """Lower case, runs of blanks as one space ("": blank, which filters nothing)."""
    return " ".join(str(raw).split()).lower()


def parse_when(name: str, raw, end: bool) -> datetime:
    """An ISO date or datetime as a UTC instant; a date (year, month or day) names its first
    instant, or with `end` its last (so both bounds include the day named). Instants beyond
    what Python holds are clamped to its first or last."""
    text = str(raw).strip().upper()  # RFC 3339 allows a lower-case t and z
    if text.startswith("0000"):  # year 0 (RFC 3339 allows it; Python does not): the start of time
        return _FIRST
    try:
        if _YEAR.match(text):
            start, following = date(int(text), 1, 1), (int(text) + 1, 1, 1)
        elif _MONTH.match(text):
            year, month = (int(p) for p in _MONTH.match(text).groups())
            start = date(year, month, 1)
            following = (year + (month == 12), month % 12 + 1, 1)
        elif len(text) == 10:
            start = date.fromisoformat(text)
            following = None
        else:
            moment = datetime.fromisoformat(_LEAP_SECOND.sub(r"\g<1>59", text))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            try:
                return moment.astimezone(timezone.utc)
            except OverflowError:
                return _LAST if moment.year > 1 else _FIRST
    except ValueError:
        raise QueryError(name, f"{name} must be an ISO date (2023-07-14, 2023-07 or 2023) or datetime "
                               f"(2023-07-14T18:30:00Z), not {raw!r}") from None
    if not end:
        return datetime.combine(start, time(0), tzinfo=timezone.utc)
    try:
        after = date(*following) if following is not None else start + timedelta(days=1)
    except (ValueError, OverflowError):  # the end of year 9999
        return _LAST
    return datetime.combine(after, time(0), tzinfo=timezone.utc) - timedelta(microseconds=1)


def check_names(names: Iterable[str], known: Iterable[str]) -> None:
    """Refuse a parameter that looks like a filter but is none (a typo such as `taken_afer`,
    or `max_width`): it would otherwise be ignored and the search silently unfiltered. A name
    counts as filter-like when it starts with `taken_`, `min_` or `max_`, or is close to a
    filter's name; other unknown names are left alone (other features' parameters)."""
    known = set(known)
    for name in names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, FILTER_NAMES + ("sort", "cursor"), n=1, cutoff=0.8)
        if close or name.startswith(("taken_", "min_", "max_")):
            hint = f"; did you mean {close[0]}?" if close else f"; the filters are {', '.join(FILTER_NAMES)}"
            raise QueryError(name, f"unknown filter {name!r}{hint}")
