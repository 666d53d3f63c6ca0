"""Geometric verification: is a candidate the query's picture, and where in it?

The query's local features (`indexer.features`) are matched to a candidate's with Lowe's ratio
test; a similarity transform (rotation, uniform scale, translation) is then fitted with RANSAC
(`cv2.estimateAffinePartial2D`) in coordinates normalised by each picture's longer side. The
inliers are the evidence; the transform gives the query's outline in the candidate's pixels,
how much of each picture the other covers, the scale and the rotation. The mirrored query's
features are tried when the straight ones verify nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .features import LocalFeatures

RATIO = 0.8  # Lowe's ratio test on descriptor distances
RANSAC_THRESHOLD = 0.012  # reprojection error, as a fraction of the candidate's longer side
MIN_CORRESPONDENCES = 5  # fewer ratio-test matches than this: not tried
# A picture with fewer keypoints than this (flat, tiny, blurred to nothing) cannot be judged:
# the pair is unverifiable, and the caller falls back to the embedding score's cut-off.
MIN_KEYPOINTS = 24
SCALE_RANGE = (1 / 25, 25)  # query pixel → candidate pixel; outside: degenerate
SAME = 0.9  # a picture at least this much covered by the other counts as whole

# Relations between a verified query and result.
SAME_FRAME = "same-frame"
QUERY_IN_RESULT = "query-in-result"  # the query is a crop of the result
RESULT_IN_QUERY = "result-in-query"  # the result is a crop of the query (a screenshot, a collage)
PARTIAL = "partial"  # they share a part only


@dataclass(frozen=True)
class VerifyOptions:
    candidates: int = 30  # LOUPE_VERIFY_CANDIDATES: top results verified per query
    # When nothing verifies, search with the mirrored query's embedding too and verify what it
    # finds (a mirrored copy can sit far from its original in embedding space).
    mirror_search: bool = True
    # Matching (not feature extraction) stops after this much time for one query; later
    # candidates stay unverified. Idle, 30 candidates take a few tens of milliseconds: the cap
    # is for a machine so loaded that answering matters more than verifying.
    budget_ms: float = 1000.0
    ratio: float = RATIO
    threshold: float = RANSAC_THRESHOLD


@dataclass(frozen=True)
class Verification:
    """The geometric evidence that a result shows the query's picture."""

    inliers: int
    outline: tuple[tuple[float, float], ...]  # the query's corners (TL, TR, BR, BL) in the result's pixels
    overlap_query: float  # fraction of the query that lies inside the result
    overlap_result: float  # fraction of the result covered by the query
    scale: float  # result pixels per query pixel
    rotation_deg: float  # how far the query is turned from the result, counter-clockwise
    mirrored: bool

    @property
    def relation(self) -> str:
        query_whole, result_whole = self.overlap_query >= SAME, self.overlap_result >= SAME
        if query_whole and result_whole:
            return SAME_FRAME
        if query_whole:
            return QUERY_IN_RESULT
        if result_whole:
            return RESULT_IN_QUERY
        return PARTIAL

    def describe(self) -> str:
        """One line for people: what was verified."""
        relation = self.relation
        if relation == SAME_FRAME:
            text = "the same picture"
        elif relation == QUERY_IN_RESULT:
            text = f"your picture is {_percent(self.overlap_result)} of this photo"
        elif relation == RESULT_IN_QUERY:
            text = f"this photo is {_percent(self.overlap_query)} of your picture"
        else:
            text = f"{_percent(self.overlap_query)} of your picture overlaps {_percent(self.overlap_result)} of this photo"
        if abs(self.rotation_deg) >= 2:
            text += f", rotated {abs(self.rotation_deg):.0f}°"
        if self.mirrored:
            text += ", mirrored"
        return text[0].upper() + text[1:]

    def as_dict(self) -> dict:
        return {
            "inliers": self.inliers,
            "overlap_query": round(self.overlap_query, 4),
            "overlap_result": round(self.overlap_result, 4),
            "scale": round(self.scale, 4),
            "rotation_deg": round(self.rotation_deg, 2),
            "mirrored": self.mirrored,
            "outline": [[round(x, 1), round(y, 1)] for x, y in self.outline],
            "relation": self.relation,
            "summary": self.describe(),
        }


def _percent(value: float) -> str:
    return f"{max(1, round(value * 100))} %"


def verify_pair(query: LocalFeatures, candidate: LocalFeatures, options: VerifyOptions = VerifyOptions(),
                mirrored: bool = False) -> Verification | None:
    """The geometric evidence that `candidate` shows `query` (whose features were found on the
    mirrored picture when `mirrored`), or None when no plausible transform fits."""
    return fit_pair(query, candidate, ratio_matches(query.descriptors, candidate.descriptors, options.ratio),
                    options, mirrored)


def fit_pair(query: LocalFeatures, candidate: LocalFeatures, pairs: np.ndarray,
             options: VerifyOptions = VerifyOptions(), mirrored: bool = False) -> Verification | None:
    """`verify_pair` given the ratio-test `pairs` (query index, candidate index)."""
    if len(pairs) < MIN_CORRESPONDENCES:
        return None
    import cv2

    q_side, c_side = max(query.width, query.height), max(candidate.width, candidate.height)
    src = query.pixels()[pairs[:, 0]] / q_side
    dst = candidate.pixels()[pairs[:, 1]] / c_side
    model, mask = cv2.estimateAffinePartial2D(src.reshape(-1, 1, 2), dst.reshape(-1, 1, 2), method=cv2.RANSAC,
                                              ransacReprojThreshold=options.threshold, maxIters=2000,
                                              confidence=0.995, refineIters=10)
    if model is None or mask is None:
        return None
    inliers = int(mask.sum())
    # In pixels: result = c_side · M · (query / q_side); a mirrored query's x was (width - x).
    linear = model[:, :2] * (c_side / q_side)
    offset = model[:, 2] * c_side
    flip = np.array([[-1.0, 0.0], [0.0, 1.0]]) if mirrored else np.eye(2)
    shift = np.array([query.width, 0.0]) if mirrored else np.zeros(2)
    # result = linear · (flip · q + shift) + offset
    a = linear @ flip
    b = linear @ shift + offset
    scale = math.sqrt(abs(np.linalg.det(a)))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return None
    w, h = query.width, query.height
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    outline = corners @ a.T + b
    inside, outline_area = _overlap(outline, candidate.width, candidate.height)
    if outline_area <= 0:
        return None
    rotation = math.degrees(math.atan2(linear[1, 0], linear[0, 0]))
    return Verification(
        inliers=inliers,
        outline=tuple((float(x), float(y)) for x, y in outline),
        overlap_query=min(1.0, inside / outline_area),
        overlap_result=min(1.0, inside / float(candidate.width * candidate.height)),
        scale=scale,
        rotation_deg=rotation,
        mirrored=mirrored,
    )


def ratio_matches(query: np.ndarray, candidate: np.ndarray, ratio: float = RATIO) -> np.ndarray:
    """(query index, candidate index) pairs whose nearest candidate descriptor is clearly
    nearer than the second nearest (unit vectors: distance² = 2 − 2·similarity)."""
    return ratio_matches_many(query, [candidate], ratio)[0]


def ratio_matches_many(query: np.ndarray, candidates: list[np.ndarray], ratio: float = RATIO) -> list[np.ndarray]:
    """`ratio_matches` of `query` against each of `candidates`, with one matrix product for
    all of them (one large product runs several times faster than many small ones)."""
    empty = np.zeros((0, 2), np.int64)
    if len(query) == 0 or not candidates:
        return [empty for _ in candidates]
    width = max(len(c) for c in candidates)
    if width < 2:
        return [empty for _ in candidates]
    stacked = np.zeros((len(candidates) * width, query.shape[1]), np.float32)
    for i, c in enumerate(candidates):
        stacked[i * width : i * width + len(c)] = c
    similarity = (query @ stacked.T).reshape(len(query), len(candidates), width)
    for i, c in enumerate(candidates):
        similarity[:, i, len(c):] = -2.0  # padding: never a neighbour
    best = similarity.argmax(axis=2)
    s1 = np.take_along_axis(similarity, best[:, :, None], axis=2)[:, :, 0]
    np.put_along_axis(similarity, best[:, :, None], -3.0, axis=2)
    s2 = similarity.max(axis=2)
    d1 = np.sqrt(np.maximum(2 - 2 * s1, 0))
    d2 = np.sqrt(np.maximum(2 - 2 * s2, 0))
    keep = (d1 < ratio * d2) & (s2 > -2.0)  # a candidate with one keypoint has no second neighbour
    found = []
    for i, c in enumerate(candidates):
        mine = keep[:, i]
        if len(c) < 2 or not mine.any():
            found.append(empty)
            continue
        pairs = np.stack([np.nonzero(mine)[0], best[mine, i]], axis=1)
        # One query keypoint per candidate keypoint (the most similar): repeated points at one
        # place (SIFT's extra orientations) would otherwise count as several inliers.
        order = np.argsort(-s1[mine, i], kind="stable")
        _, first_seen = np.unique(pairs[order, 1], return_index=True)
        found.append(pairs[order[np.sort(first_seen)]])
    return found


@dataclass
class VerifyReport:
    """What verifying one query's candidates found."""

    results: dict[int, Verification] = field(default_factory=dict)  # verified (inliers ≥ cut-off)
    checked: set[int] = field(default_factory=set)  # candidates whose features were compared
    unverifiable: set[int] = field(default_factory=set)  # too few keypoints on either side (or none stored)
    query_keypoints: int = 0
    mirrored_tried: bool = False
    mirror_searched: bool = False  # the mirrored query's embedding was searched too
    ms: float = 0.0  # all of it, the mirrored query's features included
    matching_ms: float = 0.0  # matching and model fitting alone (what the budget caps)

    def as_dict(self, inlier_cutoff: int, candidates: int) -> dict:
        return {"mode": "on", "candidates": candidates, "checked": len(self.checked), "verified": len(self.results),
                "inlier_cutoff": inlier_cutoff, "query_keypoints": self.query_keypoints,
                "mirrored_tried": self.mirrored_tried, "mirror_searched": self.mirror_searched,
                "ms": round(self.ms, 2)}


def verify_candidates(query: LocalFeatures, candidates: Iterable[tuple[int, LocalFeatures | None]],
                      inlier_cutoff: int, mirrored: Callable[[], LocalFeatures] | None = None,
                      options: VerifyOptions = VerifyOptions(), flipped: bool = False,
                      report: VerifyReport | None = None) -> VerifyReport:
    """Verify each (id, stored features or None) candidate, best first, within the matching
    time budget; when none verifies, try the mirrored query's features (`mirrored()`).
    `flipped`: `query` itself holds the mirrored picture's features. Findings are added to
    `report` (one query's calls share its budget)."""
    started = time.perf_counter()
    report = report if report is not None else VerifyReport(query_keypoints=len(query))
    stored = []
    for image_id, features in candidates:
        if features is None or len(features) < MIN_KEYPOINTS or len(query) < MIN_KEYPOINTS:
            report.unverifiable.add(image_id)
        else:
            stored.append((image_id, features))
    _run(query, stored, inlier_cutoff, flipped, options, report)
    if not report.results and mirrored is not None and stored:
        report.mirrored_tried = True
        _run(mirrored(), stored, inlier_cutoff, True, options, report)
    report.ms += (time.perf_counter() - started) * 1000
    return report


# Candidates matched per matrix product: one product for the default 30 (measured: 18 ms of CPU
# against 36 ms in products of 8 and 91 ms one by one), about 35 MB of similarities a query.
MATCH_CHUNK = 32


def _run(query: LocalFeatures, stored, cutoff: int, mirrored: bool, options: VerifyOptions,
         report: VerifyReport) -> None:
    started = time.perf_counter() - report.matching_ms / 1000
    try:
        for at in range(0, len(stored), MATCH_CHUNK):
            if (time.perf_counter() - started) * 1000 > options.budget_ms:
                break
            chunk = stored[at : at + MATCH_CHUNK]
            pairs = ratio_matches_many(query.descriptors, [features.descriptors for _, features in chunk],
                                       options.ratio)
            for (image_id, features), matched in zip(chunk, pairs):
                report.checked.add(image_id)
                found = fit_pair(query, features, matched, options, mirrored=mirrored)
                if found is not None and found.inliers >= cutoff:
                    report.results[image_id] = found
    finally:
        report.matching_ms = (time.perf_counter() - started) * 1000


def _overlap(outline: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """(area of the outline inside the width×height frame, the outline's area)."""
    import cv2

    poly = outline.astype(np.float32)
    area = abs(float(cv2.contourArea(poly)))
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    inside, _ = cv2.intersectConvexConvex(np.ascontiguousarray(poly), frame)
    return max(0.0, float(inside)), area
