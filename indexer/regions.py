"""Regions of an indexed picture: R-MAC-style overlapping squares at a few scales.

A cropped query shows only part of its original, so its embedding sits far from the
original's whole-image embedding but close to the embedding of the matching part. Each
indexed picture therefore also stores a few square regions (Tolias et al., "Particular
object retrieval with integral max-pooling of CNN activations", 2016): at scale l the side
is 2·min(W, H)/(l + 1), and squares are spread evenly along each side with about 40%
overlap between neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import ConfigError

# Chosen by bench/robustness.py (docs/robustness.md): scale 2 alone (6-8 regions a picture)
# recovers most crops with no kind losing recall; adding scale 3 (about 3x the regions) helped
# 20% crops a little more but cost captioned pictures.
DEFAULT_SCALES = (2,)
DEFAULT_PENALTY = 0.002


@dataclass(frozen=True)
class Box:
    """A rectangle in the original picture's pixels (after EXIF orientation)."""

    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def scaled(self, sx: float, sy: float) -> tuple[int, int, int, int]:
        """The same rectangle as a Pillow crop box (left, top, right, bottom) in an image
        that is `sx`, `sy` times the original's size."""
        left, top = round(self.x * sx), round(self.y * sy)
        right = max(left + 1, round((self.x + self.w) * sx))
        bottom = max(top + 1, round((self.y + self.h) * sy))
        return left, top, right, bottom


@dataclass(frozen=True)
class RegionSpec:
    """Which regions to index: the R-MAC scales (empty: none) and the overlap between them."""

    scales: tuple[int, ...] = DEFAULT_SCALES
    overlap: float = 0.4
    min_side: int = 32  # regions smaller than this (in original pixels) are not worth a vector
    # Subtracted from a region's score before it competes with whole images: a part of a
    # picture resembles more pictures than the whole does (`LOUPE_REGION_PENALTY`).
    penalty: float = DEFAULT_PENALTY

    @property
    def finest(self) -> float:
        """The smallest region side as a fraction of the picture's short side."""
        return 2.0 / (max(self.scales) + 1) if self.scales else 1.0

    @classmethod
    def parse(cls, text: str | None, penalty: str | None = None) -> "RegionSpec":
        """`LOUPE_REGIONS` (comma-separated scales such as `2,3`, or `off`) and
        `LOUPE_REGION_PENALTY` (a score between 0 and 1)."""
        base = cls(penalty=_parse_penalty(penalty)) if penalty not in (None, "") else cls()
        if text is None or not text.strip():
            return base
        value = text.strip().lower()
        if value in ("off", "none", "0"):
            return replace(base, scales=())
        try:
            scales = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
        except ValueError:
            raise ConfigError(f"LOUPE_REGIONS={text!r} is not `off` or comma-separated scales such as 2,3") from None
        if not scales or any(s < 1 or s > 6 for s in scales):
            raise ConfigError(f"LOUPE_REGIONS={text!r}: scales must be between 1 and 6")
        return replace(base, scales=scales)

    def draft_size(self, input_size: int) -> int:
        """The JPEG draft size to decode at: large enough that the smallest region still
        fills the model's input. Queries decode at the same size, so a file indexed and then
        searched for embeds identically."""
        return int(math.ceil(input_size / self.finest))

    def describe(self) -> str:
        return ",".join(map(str, self.scales)) if self.scales else "off"


def _parse_penalty(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"LOUPE_REGION_PENALTY={text!r} is not a number between 0 and 1")
    return value


def region_boxes(width: int, height: int, spec: RegionSpec = RegionSpec()) -> list[Box]:
    """The regions of a `width`×`height` picture, coarsest scale first (a pure function)."""
    if width <= 0 or height <= 0:
        return []
    boxes: list[Box] = []
    short = min(width, height)
    for level in spec.scales:
        side = int(round(2 * short / (level + 1)))
        if side < spec.min_side:
            continue
        for y in _positions(height, side, spec.overlap):
            for x in _positions(width, side, spec.overlap):
                boxes.append(Box(x, y, side, side))
    return boxes


def _positions(length: int, side: int, overlap: float) -> list[int]:
    """Evenly spaced starts of `side`-long windows covering `length`, neighbours overlapping
    by at least `overlap` of a side."""
    if side >= length:
        return [0]
    count = math.ceil((length - side) / (side * (1.0 - overlap))) + 1
    step = (length - side) / (count - 1)
    return [int(round(i * step)) for i in range(count)]
