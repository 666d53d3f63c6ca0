"""Match labels: is a result the query's own picture (`exact`), the same picture altered
(`near-duplicate`), or just a `similar` one?

`exact` is decided by content: the same file bytes (sha256), or the same pixels once both
are decoded (checked only for results scoring close to 1, by decoding the result's file).
`near-duplicate`, with verification on (the default), needs geometric evidence: at least
`InlierCutoff.inliers` RANSAC inliers between the query's local features and the result's
(`indexer.verify`); a high embedding score alone is `similar`. That cut-off is calibrated like
the score cut-off: sampled indexed pictures are verified against their nearest neighbours, and
it is the count that at most `target` of those reach (within fixed bounds, see
`inlier_cutoff`). With verification off, `near-duplicate` is a score cut-off calibrated on the
index's own pictures: each of a sample of indexed images is searched for with the image itself
left out, and the cut-off is the score that only a `target` fraction of those top scores reach.
Those top scores are what a picture that is *not* in the collection scores against it, so the
cut-off's false-match rate is about `target` (the robustness benchmark measures both on held-out
photographs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

EXACT = "exact"
NEAR_DUPLICATE = "near-duplicate"
SIMILAR = "similar"
COPY_LABELS = frozenset({EXACT, NEAR_DUPLICATE})

TARGET_FALSE_MATCH_RATE = 0.01
CALIBRATION_SAMPLE = 1000
DEFAULT_NEAR_DUPLICATE_CUTOFF = 0.95  # before any calibration (fewer than two images)
PIXEL_CHECK_SCORE = 0.99  # results scoring at least this are compared pixel by pixel


@dataclass(frozen=True)
class MatchCutoff:
    """The scores from which a result is the same picture, and how they were chosen.

    Matches through a region get their own cut-off: parts of different pictures (a patch of
    sky, a dark border) resemble each other more than whole pictures do.
    """

    whole: float
    region: float
    basis: str

    def label(self, score: float, exact: bool = False, region: bool = False) -> str:
        if exact:
            return EXACT
        return NEAR_DUPLICATE if score >= (self.region if region else self.whole) else SIMILAR

    def as_dict(self) -> dict:
        return {"near_duplicate": round(self.whole, 6), "near_duplicate_region": round(self.region, 6),
                "basis": self.basis}


DEFAULT_CUTOFF = MatchCutoff(DEFAULT_NEAR_DUPLICATE_CUTOFF, DEFAULT_NEAR_DUPLICATE_CUTOFF, "default (not calibrated yet)")


def quantile_cutoff(non_member_scores: np.ndarray, target: float = TARGET_FALSE_MATCH_RATE) -> float | None:
    """The lowest score that at most `target` of the non-member scores reach (with few scores,
    just above their maximum); None without at least two scores."""
    scores = np.sort(np.asarray(non_member_scores, dtype=np.float64))
    if len(scores) < 2:
        return None
    allowed = int(np.floor(target * len(scores)))  # how many non-members may reach the cut-off
    threshold = float(scores[len(scores) - 1 - allowed])
    return min(float(np.nextafter(np.float32(threshold), np.float32(np.inf))), 1.0)


def calibrate_cutoff(whole_scores: np.ndarray, region_scores: np.ndarray,
                     target: float = TARGET_FALSE_MATCH_RATE) -> MatchCutoff:
    """Cut-offs from the leave-one-out top scores of indexed images against the others' whole
    pictures and against their regions."""
    whole = quantile_cutoff(whole_scores, target)
    if whole is None:
        return DEFAULT_CUTOFF
    region = quantile_cutoff(region_scores, target)
    return MatchCutoff(
        whole,
        region if region is not None else DEFAULT_NEAR_DUPLICATE_CUTOFF,
        f"calibrated on leave-one-out searches of {len(whole_scores)} indexed images: "
        f"at most {target:.0%} of pictures not in the collection reach it",
    )


# Random correspondences rarely fit one similarity: measured on scikit-image's photographs,
# unrelated pairs reach at most 4 inliers with 800 query keypoints, copies 13 and more. The
# calibrated cut-off stays within these bounds: a collection holding many copies of its own
# pictures would otherwise push it up to the copies' counts.
MIN_INLIERS = 10
MAX_INLIERS = 16
INLIER_CALIBRATION_SAMPLE = 200
INLIER_CALIBRATION_NEIGHBOURS = 10


@dataclass(frozen=True)
class InlierCutoff:
    """The inliers from which a verified result counts as a copy, and how it was chosen."""

    inliers: int
    basis: str

    def as_dict(self) -> dict:
        return {"inliers": self.inliers, "basis": self.basis}


DEFAULT_INLIER_CUTOFF = InlierCutoff(MIN_INLIERS, "default (not calibrated yet)")


def inlier_cutoff(non_member_inliers: np.ndarray, target: float = TARGET_FALSE_MATCH_RATE) -> InlierCutoff:
    """One more than the inliers that more than `target` of the non-member counts reach, kept
    between MIN_INLIERS and MAX_INLIERS; the default without at least two counts."""
    counts = np.sort(np.asarray(non_member_inliers, dtype=np.int64))
    if len(counts) < 2:
        return DEFAULT_INLIER_CUTOFF
    allowed = int(np.floor(target * len(counts)))
    value = int(min(MAX_INLIERS, max(MIN_INLIERS, counts[len(counts) - 1 - allowed] + 1)))
    return InlierCutoff(value, f"calibrated on {len(counts)} indexed pictures verified against their "
                               f"{INLIER_CALIBRATION_NEIGHBOURS} nearest others (kept within "
                               f"{MIN_INLIERS}-{MAX_INLIERS})")


def same_pixels(query: Callable[[], Image.Image], read: Callable[[], bytes], decode: Callable[[bytes], Image.Image]) -> bool:
    """Whether the file `read()` gives (the result's catalogued file, opened with the checks of
    `indexer.safeopen`) decodes to exactly the query's pixels."""
    try:
        theirs = decode(read())
    except Exception:  # an unreadable or changed file is simply not an exact copy
        return False
    ours = query()
    if ours.size != theirs.size:
        return False
    return bool(np.array_equal(np.asarray(ours), np.asarray(theirs)))
