"""Duplicates across the library: groups of exact and near-duplicate pictures, and bursts.

range search ▸ candidate pairs ▸ verification ▸ components ▸ anti-chaining split ▸ kind ▸ keep:

1. `Library.near_pairs`: every pair of indexed pictures whose whole-picture vectors score at
   least the candidate score (the calibrated near-duplicate cut-off, lowered by a margin when
   verification will judge the pairs), each picture keeping its best `max_neighbours`.
2. A pair is an edge when both pictures have enough local features and verify geometrically
   (at least the calibrated inlier cut-off, one picture inside the other: not merely
   overlapping); when verification cannot judge it (features missing, too few keypoints), when
   its score reaches the cut-off and small greyscale thumbnails of the two files correlate
   (`PIXEL_MATCH`, one picture whole against the other whole or centre-cropped); with verification off, when its score reaches the cut-off. Files with the
   same bytes (catalog status `duplicate`) ride with the picture that holds their vector.
3. Connected components of the edges, split so that no picture joins a group through a chain:
   each group is a centre (the picture with most edges) and pictures with an edge *to it*; the
   rest are grouped again the same way.
4. A group is a `burst` when every picture has the same camera and they were taken (EXIF times)
   at most `burst_gap_s` apart, not all at the same instant: burst groups are shown, never
   suggested for removal.
5. The picture to keep: most pixels, then the earliest date taken, then the shortest path.

Groups are computed over the whole library (tens of seconds at 100k pictures on 2 cores) and
cached beside the index (`DuplicatesCache`), keyed by a fingerprint of the catalog.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from sqlalchemy import func, select

from .catalog import DuplicateDismissal, ImageRecord, ImageStatus, IndexInfo
from .library import SQL_CHUNK, Library

DUPLICATE, BURST = "duplicate", "burst"
KINDS = (DUPLICATE, BURST)
EXACT, VERIFIED, PIXELS, SCORE, CENTRE = "exact", "verified", "pixels", "score", "centre"
# Verification judges a pair only when both pictures have at least this many stored keypoints:
# copies of a picture poorer in texture reach fewer inliers than the cut-off (measured on
# scikit-image's phantom: 10-14 inliers from 22-67 keypoints, against 130-220 for textured
# photographs with 240), so its pairs are left to the embedding's cut-off, as unverifiable ones are.
JUDGEABLE_KEYPOINTS = 64
# Pairs verification cannot judge (too few keypoints on either side) are compared by their
# pixels instead: small greyscale thumbnails, their normalised correlation at least PIXEL_MATCH.
# Untrained and even trained embeddings put flat, dark pictures (micrographs, night skies) close
# together (measured untrained: 0.997 between unrelated ones), so the score alone would join them.
# Measured on the planted copies of bench/duplicates.py (untrained ViT-B-32): copies of pictures
# too poor in keypoints correlate 0.87 or more (crops of 85 % included), unrelated ones that the
# embedding puts above the cut-off at most 0.40.
PIXEL_SIDE = 16
PIXEL_MATCH = 0.75
PIXEL_ZOOMS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # centred crops tried against the other's whole
CACHE_NAME = "duplicates.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class DuplicateOptions:
    verify: bool = True  # judge candidate pairs by their local features (LOUPE_VERIFY)
    # With verification, candidates come from this far below the near-duplicate cut-off: an
    # altered copy (crop, re-encode) can score below it, and verification refuses look-alikes.
    candidate_margin: float = 0.08
    min_candidate_score: float = 0.5
    max_neighbours: int = 16  # candidates per picture (bounds verification's cost)
    nprobe: int | None = None  # probes of an inverted-file index for the neighbour search (None: its own)
    burst_gap_s: float = 10.0  # bursts: at most this long between consecutive shots

    def key(self) -> list:
        return [self.verify, self.candidate_margin, self.min_candidate_score, self.max_neighbours, self.nprobe,
                self.burst_gap_s]


@dataclass(frozen=True)
class Member:
    """One picture of a group, with what ties it to the group's centre."""

    id: int
    path: str
    width: int | None
    height: int | None
    size_bytes: int
    content_hash: str | None
    taken_at: str | None  # ISO 8601, UTC
    camera: str | None
    score: float  # whole-picture similarity to the centre (1 for the centre and same-bytes copies)
    evidence: str  # centre, exact (same bytes), verified (local features), pixels (thumbnails) or score
    inliers: int | None = None

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def as_dict(self) -> dict:
        body = {"id": self.id, "path": self.path, "score": round(self.score, 6), "width": self.width,
                "height": self.height, "size_bytes": self.size_bytes, "content_hash": self.content_hash,
                "taken_at": self.taken_at,
                "camera": self.camera, "evidence": self.evidence, "inliers": self.inliers}
        return body


@dataclass(frozen=True)
class DuplicateGroup:
    id: str  # stable: a hash of the members' content hashes
    kind: str  # duplicate or burst
    members: tuple[Member, ...]  # the picture to keep first
    keep: int
    reason: str

    @property
    def hashes(self) -> list[str]:
        return sorted({m.content_hash or f"id:{m.id}" for m in self.members})

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "images": [m.as_dict() for m in self.members],
                "keep": self.keep, "reason": self.reason}

    @classmethod
    def from_dict(cls, body: dict) -> "DuplicateGroup":
        names = set(Member.__dataclass_fields__)
        members = tuple(Member(**{k: v for k, v in m.items() if k in names}) for m in body["images"])
        return cls(body["id"], body["kind"], members, body["keep"], body["reason"])


@dataclass(frozen=True)
class DuplicateStats:
    candidate_score: float
    cutoff: float
    inlier_cutoff: int
    candidate_pairs: int
    verified_pairs: int
    refused_pairs: int
    score_pairs: int
    pixel_pairs: int
    exact_pairs: int
    seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DuplicateReport:
    groups: tuple[DuplicateGroup, ...]
    stats: DuplicateStats
    fingerprint: str


# -- grouping (pure functions) ------------------------------------------------------------------
def components(nodes: Iterable[int], edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (each sorted) of the graph, single nodes included."""
    parent: dict[int, int] = {n: n for n in nodes}

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    found: dict[int, list[int]] = {}
    for n in parent:
        found.setdefault(root(n), []).append(n)
    return [sorted(c) for c in found.values()]


def star_split(component: Sequence[int], weights: dict[tuple[int, int], float]) -> list[tuple[int, list[int]]]:
    """Split a component into stars, the guard against chaining: each is (centre, members), every
    member joined by an edge (`weights`, keyed by (smaller, larger) id) to the centre, or to more
    than half of the star's members (at least two): a chain of pictures each like only the next
    never becomes one group. The centre is the picture with most edges among those left, then
    the highest total weight, then the lowest id; stars of one picture are dropped."""
    left = set(component)
    neighbours: dict[int, dict[int, float]] = {n: {} for n in component}
    for (a, b), w in weights.items():
        if a in neighbours and b in neighbours:
            neighbours[a][b] = w
            neighbours[b][a] = w
    stars = []
    while left:
        def rank(n: int):
            mine = [w for m, w in neighbours[n].items() if m in left]
            return (len(mine), sum(mine), -n)

        centre = max(left, key=rank)
        members = {centre, *(m for m in neighbours[centre] if m in left)}
        grown = True
        while grown:  # a picture the centre missed joins when it matches most of the star
            grown = False
            for n in sorted(left - members):
                links = sum(1 for m in neighbours[n] if m in members)
                if links >= 2 and 2 * links > len(members):
                    members.add(n)
                    grown = True
        left -= members
        if len(members) > 1:
            stars.append((centre, [centre, *sorted(members - {centre})]))
    return stars


def keep_choice(members: Sequence[Member]) -> tuple[Member, str]:
    """The picture to keep and why: most pixels, then the earliest date taken, then the shortest
    path (then the lowest id)."""
    def key(m: Member):
        return (-m.pixels, m.taken_at is None, m.taken_at or "", len(m.path), m.id)

    ranked = sorted(members, key=key)
    best, runner = ranked[0], ranked[1]
    if best.pixels > runner.pixels:
        return best, f"most pixels ({best.width}×{best.height})"
    if best.taken_at is not None and (runner.taken_at is None or best.taken_at < runner.taken_at):
        return best, f"same size; taken earliest ({best.taken_at})"
    if len(best.path) < len(runner.path):
        return best, "same size and date taken; shortest path"
    return best, "same size, date and path length; lowest id"


def burst_of(members: Sequence[Member], taken: dict[int, tuple[datetime | None, str | None]],
             gap_s: float) -> bool:
    """Whether `members` are burst shots: one camera for all, EXIF times (not file times) no
    more than `gap_s` apart in sequence, and not all the same instant (copies share theirs)."""
    cameras = {m.camera for m in members}
    if len(cameras) != 1 or None in cameras:
        return False
    times = []
    for m in members:
        at, source = taken.get(m.id, (None, None))
        if at is None or source == "file":
            return False
        times.append(at.timestamp())
    times.sort()
    gaps = np.diff(times)
    return bool(len(set(times)) > 1 and np.all(gaps <= gap_s))


def group_id(hashes: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(hashes))).encode()).hexdigest()[:16]


# -- the library's groups -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    id: int
    path: str
    width: int | None
    height: int | None
    size_bytes: int
    content_hash: str | None
    taken_at: datetime | None
    taken_source: str | None
    camera: str | None


def _camera(make: str | None, model: str | None) -> str | None:
    if not make and not model:
        return None
    make, model = (make or "").strip(), (model or "").strip()
    return model if make and model.lower().startswith(make.lower()) else " ".join(p for p in (make, model) if p)


def _rows(library: Library, ids: Iterable[int]) -> dict[int, _Row]:
    ids = sorted(set(ids))
    found = {}
    columns = (ImageRecord.id, ImageRecord.path, ImageRecord.width, ImageRecord.height, ImageRecord.size_bytes,
               ImageRecord.content_hash, ImageRecord.taken_at, ImageRecord.taken_source, ImageRecord.camera_make,
               ImageRecord.camera_model)
    with library.sessions() as session:
        for start in range(0, len(ids), SQL_CHUNK):
            for r in session.execute(select(*columns).where(ImageRecord.id.in_(ids[start : start + SQL_CHUNK]))):
                found[r.id] = _Row(r.id, r.path, r.width, r.height, r.size_bytes, r.content_hash, r.taken_at,
                                   r.taken_source, _camera(r.camera_make, r.camera_model))
    return found


def _copies(library: Library) -> dict[int, list[int]]:
    """Same-bytes copies: each indexed picture's `duplicate` rows."""
    found: dict[int, list[int]] = {}
    with library.sessions() as session:
        for dup, original in session.execute(select(ImageRecord.id, ImageRecord.duplicate_of).where(
                ImageRecord.status == ImageStatus.DUPLICATE, ImageRecord.duplicate_of.is_not(None))):
            found.setdefault(original, []).append(dup)
    return found


def fingerprint(library: Library, options: DuplicateOptions) -> str:
    """What the groups depend on, in one string: the catalog's pictures (count, id sum, largest
    id), how many have metadata and features, the calibrated cut-offs and the options."""
    with library.sessions() as session:
        rows = session.execute(select(ImageRecord.status, func.count(), func.sum(ImageRecord.id), func.max(ImageRecord.id),
                                      func.count(ImageRecord.metadata_version), func.count(ImageRecord.local_features))
                               .where(ImageRecord.status.in_([ImageStatus.INDEXED, ImageStatus.DUPLICATE]))
                               .group_by(ImageRecord.status)).all()
        info = session.get(IndexInfo, 1)
    cut = [info.whole_cutoff, info.inlier_cutoff] if info is not None else [None, None]
    body = json.dumps([CACHE_VERSION, sorted([list(map(lambda v: v if v is None else str(v), r)) for r in rows]),
                       cut, options.key()])
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def find_groups(library: Library, options: DuplicateOptions = DuplicateOptions()) -> DuplicateReport:
    """Every group of duplicates and bursts in `library` (dismissed ones included), largest first."""
    from .features import decode
    from .verify import MIN_KEYPOINTS, PARTIAL, VerifyOptions, fit_pair, ratio_matches_many

    clock, seconds = time.perf_counter(), {}
    stamp = fingerprint(library, options)
    calibration = library.calibration()
    cutoff, inlier_cutoff = calibration.match.whole, calibration.inliers.inliers
    candidate = cutoff - options.candidate_margin if options.verify else cutoff
    candidate = min(cutoff, max(candidate, options.min_candidate_score))
    if len(library.store):
        a, b, scores = library.near_pairs(candidate, options.max_neighbours, options.nprobe)
    else:
        a = b = np.zeros(0, np.int64)
        scores = np.zeros(0, np.float32)
    seconds["range_search"] = time.perf_counter() - clock

    clock = time.perf_counter()
    weights: dict[tuple[int, int], float] = {}
    evidence: dict[tuple[int, int], tuple[str, int | None]] = {}
    verified = refused = by_score = by_pixels = 0
    judged = np.zeros(len(a), bool)
    if options.verify and len(a):
        involved = sorted(set(a.tolist()) | set(b.tolist()))
        blobs = _feature_blobs(library, involved)
        features = {}
        for image_id, blob in blobs.items():
            try:
                found = decode(blob)
            except ValueError:
                continue
            if len(found) >= max(MIN_KEYPOINTS, JUDGEABLE_KEYPOINTS):
                features[image_id] = found
        verify_options = VerifyOptions()
        order = np.argsort(a, kind="stable")
        starts = np.flatnonzero(np.r_[True, a[order][1:] != a[order][:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(order)]):
            rows = order[start:end]
            query = features.get(int(a[rows[0]]))
            if query is None:
                continue
            usable = [r for r in rows if int(b[r]) in features]
            if not usable:
                continue
            matched = ratio_matches_many(query.descriptors, [features[int(b[r])].descriptors for r in usable],
                                         verify_options.ratio)
            for r, pairs in zip(usable, matched):
                judged[r] = True
                found = fit_pair(query, features[int(b[r])], pairs, verify_options)
                key = (int(a[r]), int(b[r]))
                if found is not None and found.inliers >= inlier_cutoff and found.relation != PARTIAL:
                    weights[key] = float(scores[r])
                    evidence[key] = (VERIFIED, found.inliers)
                    verified += 1
                else:
                    refused += 1
    signatures: dict[int, np.ndarray | None] = {}
    for r in np.flatnonzero(~judged):
        key = (int(a[r]), int(b[r]))
        if options.verify:  # verification cannot judge this pair: its pixels decide
            if scores[r] < cutoff:
                continue
            pair = [_signature(library, i, signatures) for i in key]
            if pair[0] is None or pair[1] is None or pixels_alike(pair[0], pair[1]) < PIXEL_MATCH:
                refused += 1
                continue
            weights[key] = float(scores[r])
            evidence[key] = (PIXELS, None)
            by_pixels += 1
        elif scores[r] >= cutoff:
            weights[key] = float(scores[r])
            evidence[key] = (SCORE, None)
            by_score += 1
    seconds["verify"] = time.perf_counter() - clock

    clock = time.perf_counter()
    copies = _copies(library)
    nodes = set(copies)
    for key in weights:
        nodes.update(key)
    rows = _rows(library, list(nodes) + [c for cs in copies.values() for c in cs])
    groups = []
    for component in components(nodes, weights):
        for centre, star in star_split(component, weights) if len(component) > 1 else [(component[0], component)]:
            members = []
            for node in star:
                if node not in rows:
                    continue
                if node == centre:
                    score, (kind, inliers) = 1.0, (CENTRE, None)
                else:  # its edge to the centre, or its strongest into the star
                    key = (min(node, centre), max(node, centre))
                    if key not in weights:
                        key = max(((min(node, m), max(node, m)) for m in star if m != node),
                                  key=lambda k: weights.get(k, -1.0))
                    score, (kind, inliers) = weights[key], evidence[key]
                members.append(_member(rows[node], score, kind, inliers))
                members += [_member(rows[c], score if node != centre else 1.0, EXACT if node == centre else kind, inliers)
                            for c in copies.get(node, []) if c in rows]
            if len(members) > 1:
                groups.append(_group(members, rows, options))
    groups.sort(key=lambda g: (g.kind != DUPLICATE, -len(g.members), g.keep))
    seconds["group"] = time.perf_counter() - clock
    stats = DuplicateStats(round(candidate, 6), round(cutoff, 6), inlier_cutoff, int(len(a)), verified, refused,
                           by_score, by_pixels, sum(len(c) for c in copies.values()),
                           {k: round(v, 3) for k, v in seconds.items()})
    return DuplicateReport(tuple(groups), stats, stamp)


def _member(row: _Row, score: float, evidence: str, inliers: int | None) -> Member:
    taken = row.taken_at.isoformat() if row.taken_at is not None else None
    return Member(row.id, row.path, row.width, row.height, row.size_bytes, row.content_hash, taken, row.camera,
                  round(float(score), 6), evidence, inliers)


def _group(members: list[Member], rows: dict[int, _Row], options: DuplicateOptions) -> DuplicateGroup:
    kept, reason = keep_choice(members)
    taken = {m.id: (rows[m.id].taken_at, rows[m.id].taken_source) for m in members}
    kind = BURST if burst_of(members, taken, options.burst_gap_s) else DUPLICATE
    if kind == BURST:
        reason = f"burst shots ({members[0].camera}): shown for review, nothing suggested for removal; best frame: {reason}"
    ordered = (kept, *sorted((m for m in members if m.id != kept.id), key=lambda m: m.id))
    return DuplicateGroup(group_id(m.content_hash or f"id:{m.id}" for m in members), kind, ordered, kept.id, reason)


def _signature(library: Library, image_id: int, cache: dict[int, np.ndarray | None]) -> np.ndarray | None:
    """The picture's PIXEL_SIDE² greyscale thumbnails, one row per zoom of `PIXEL_ZOOMS` (the
    whole picture, then centred crops), each centred and of unit length (None: its file cannot
    be read as catalogued, or it is one flat colour)."""
    if image_id not in cache:
        from PIL import Image

        from .images import DecodeLimits

        try:
            data = library.read_image_bytes(image_id, DecodeLimits())
            with Image.open(io.BytesIO(data)) as img:
                img.draft("L", (PIXEL_SIDE * 8, PIXEL_SIDE * 8))
                grey = img.convert("L")
            rows = []
            for zoom in PIXEL_ZOOMS:
                w, h = grey.size
                cw, ch = w * zoom, h * zoom
                box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
                small = np.asarray(grey.resize((PIXEL_SIDE, PIXEL_SIDE), Image.BOX, box=box), np.float32).ravel()
                small -= small.mean()
                norm = float(np.linalg.norm(small))
                if norm <= 1e-3:
                    raise ValueError("flat")
                rows.append(small / norm)
            cache[image_id] = np.stack(rows)
        except Exception:  # a vanished, changed, unreadable or flat file: nothing to compare
            cache[image_id] = None
    return cache[image_id]


def pixels_alike(first: np.ndarray, second: np.ndarray) -> float:
    """How alike two pictures' thumbnails are: the best correlation of one whole picture with
    the other at any zoom (so that a crop of about that size matches its original)."""
    return float(max((first[0] @ second.T).max(), (second[0] @ first.T).max()))


def _feature_blobs(library: Library, ids: Sequence[int]) -> dict[int, bytes]:
    found = {}
    with library.sessions() as session:
        for start in range(0, len(ids), SQL_CHUNK):
            for r in session.execute(select(ImageRecord.id, ImageRecord.local_features).where(
                    ImageRecord.id.in_(ids[start : start + SQL_CHUNK]), ImageRecord.local_features.is_not(None))):
                found[r.id] = r.local_features
    return found


# -- dismissals ---------------------------------------------------------------------------------
def dismissed_sets(library: Library) -> list[frozenset[str]]:
    with library.sessions() as session:
        return [frozenset(_json_list(h)) for h in session.scalars(select(DuplicateDismissal.hashes))]


def visible(groups: Iterable[DuplicateGroup], dismissed: list[frozenset[str]]) -> list[DuplicateGroup]:
    """The groups not dismissed: a group stays hidden while every member is one of a dismissed
    group's (a picture removed since keeps it hidden; a new copy joining shows it again)."""
    return [g for g in groups if not any(set(g.hashes) <= d for d in dismissed)]


def dismiss(library: Library, group: DuplicateGroup) -> None:
    """Remember `group` as dismissed (idempotent)."""
    with library.sessions.begin() as session:
        if session.get(DuplicateDismissal, group.id) is None:
            session.add(DuplicateDismissal(group_id=group.id, hashes=json.dumps(group.hashes)))


def undismiss(library: Library, group_id_: str) -> bool:
    with library.sessions.begin() as session:
        row = session.get(DuplicateDismissal, group_id_)
        if row is None:
            return False
        session.delete(row)
        return True


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


# -- the cache ----------------------------------------------------------------------------------
class DuplicatesCache:
    """The library's groups, computed on a miss and kept in `$LOUPE_HOME/duplicates.json` under
    the catalog's fingerprint (`fingerprint`): a changed catalog, cut-off or option recomputes."""

    def __init__(self, library: Library, options: DuplicateOptions = DuplicateOptions()):
        self.library, self.options = library, options
        self.path: Path = library.settings.home / CACHE_NAME

    def read(self) -> tuple[list[DuplicateGroup], dict] | None:
        """The cached groups and stats when they are still the catalog's; else None."""
        try:
            body = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if body.get("fingerprint") != fingerprint(self.library, self.options):
            return None
        try:
            return [DuplicateGroup.from_dict(g) for g in body["groups"]], body.get("stats", {})
        except (KeyError, TypeError):
            return None

    def groups(self, refresh: bool = False) -> tuple[list[DuplicateGroup], dict]:
        """The groups (from the cache when fresh) and how they were computed."""
        cached = None if refresh else self.read()
        if cached is not None:
            return cached[0], {**cached[1], "cached": True}
        report = find_groups(self.library, self.options)
        self.write(list(report.groups), report.stats.as_dict(), report.fingerprint)
        return list(report.groups), {**report.stats.as_dict(), "cached": False}

    def write(self, groups: list[DuplicateGroup], stats: dict, stamp: str | None = None) -> None:
        from .atomic import atomic_write

        body = {"fingerprint": stamp or fingerprint(self.library, self.options), "stats": stats,
                "groups": [g.as_dict() for g in groups]}
        atomic_write(self.path, json.dumps(body))

    def without(self, image_ids: set[int], before: str) -> None:
        """After pictures left the catalog (quarantine): drop them from the cached groups, so
        the next read needs no recomputation (groups left with one picture go). Only a cache
        that was fresh `before` (the fingerprint then) is carried over."""
        try:
            body = json.loads(self.path.read_text())
            if body.get("fingerprint") != before:
                return
            groups, stats = [DuplicateGroup.from_dict(g) for g in body["groups"]], body.get("stats", {})
        except (OSError, ValueError, KeyError, TypeError):
            return
        kept = []
        for g in groups:
            members = [m for m in g.members if m.id not in image_ids]
            if len(members) < 2:
                continue
            if len(members) < len(g.members):
                keep = g.keep if any(m.id == g.keep for m in members) else keep_choice(members)[0].id
                members.sort(key=lambda m: (m.id != keep, m.id))
                g = replace(g, id=group_id(m.content_hash or f"id:{m.id}" for m in members),
                            members=tuple(members), keep=keep)
            kept.append(g)
        self.write(kept, stats)
