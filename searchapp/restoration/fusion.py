"""Fusing the raw query's ranking with the reconstructed query's.

Each image scores the weighted mean of its scores under the two queries (CombSUM). An image
missing from one list gets that list's lowest score (what it scored at most there), so an image
must rank well under both queries to rise: a reconstruction that invents detail and drifts
towards another picture cannot push out a good raw match on its own. Each result says which
list found it: `raw`, `restored` or `both`. The raw ranking's first result keeps first place:
without verification to confirm it, a reconstruction's evidence does not overturn the query as
given (held out, reconstructions that did so lost more right answers than they won).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from indexer.library import SearchResult


def fuse(raw: Sequence[SearchResult], restored: Sequence[SearchResult], raw_weight: float = 0.5) -> list[SearchResult]:
    """Both rankings as one: the raw top result, then the rest best first (ties by id), each
    result labelled with its path."""
    if not restored:
        return [replace(r, found_by="raw") for r in raw]
    if not raw:
        return [replace(r, found_by="restored") for r in restored]
    raw_by_id = {r.id: r for r in raw}
    restored_by_id = {r.id: r for r in restored}
    raw_floor, restored_floor = raw[-1].score, restored[-1].score
    fused = []
    for image_id in raw_by_id.keys() | restored_by_id.keys():
        a, b = raw_by_id.get(image_id), restored_by_id.get(image_id)
        score = raw_weight * (a.score if a else raw_floor) + (1 - raw_weight) * (b.score if b else restored_floor)
        best = a if b is None or (a is not None and a.score >= b.score) else b  # its region, if any
        found_by = "both" if a and b else ("raw" if a else "restored")
        fused.append(replace(best, score=score, found_by=found_by))
    top = raw[0].id
    fused.sort(key=lambda r: (r.id != top, -r.score, r.id))
    return fused
