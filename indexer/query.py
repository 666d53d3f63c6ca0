"""What a search asks for: one frozen `SearchQuery` that the CLI, the HTTP API, the service and
the benchmarks build, and that `Library.search` and the reverse lookups take. The page bounds
(`MAX_K`, `MAX_OFFSET`) are defined here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .filters import RELEVANCE, SORT_POOL, SORTS, LibraryFilter, QueryError

if TYPE_CHECKING:
    from .verify import VerifyOptions

MAX_K = 200  # results a page may hold
DEFAULT_K = 20  # results a page holds when the client does not say (the HTTP API; the CLI has its own)
MAX_OFFSET = 10_000  # the deepest page the HTTP API serves
MAX_TEXT = 1000  # the longest search text, in characters
TEXT_BLANKS = " \t\n\r\f\v"  # what a search text is trimmed of; nothing else left means no text
# `min_score` searches count the results that reach it down to the deepest page a client can ask
# for; beyond that, `total` says how many were counted (the cost of a count stays that of a page).
MAX_DEPTH = MAX_OFFSET + MAX_K
SCORE_DIGITS = 6  # scores are reported (and held to min_score) at this many decimals


@dataclass(frozen=True)
class SearchQuery:
    """One page of a search: the results ranked `offset + 1` to `offset + k`.

    `regions`: search the regional index too (an image scores the best of its whole picture and
    its regions); `exclude`: image ids left out; `min_score`: results scoring below it (as
    reported, at SCORE_DIGITS decimals) are left out before paging, so a page is full while more
    results reach it and `total` counts only those; `verify`: geometric verification of an
    image query's top candidates (None: off; text queries ignore it). `filters`: the catalog
    filters a result must pass (folder, date taken, format, size, camera; `indexer.filters`);
    `sort`: `relevance`, or a listing of the most relevant matches ordered by `taken`, `-taken`
    or `size` (see `pool_depth`); `cursor`: an opaque position from a previous page's `next`
    (`indexer.cursor`), resolved into `offset` by `Library.resume`."""

    k: int = DEFAULT_K
    offset: int = 0
    regions: bool = False
    exclude: tuple[int, ...] = ()
    min_score: float | None = None
    verify: "VerifyOptions | None" = None
    filters: LibraryFilter = field(default_factory=LibraryFilter)
    sort: str = RELEVANCE
    cursor: str | None = None
    rerank: str = "off"  # "diffusion": re-rank over the collection's graph (indexer.diffusion_rank)

    def __post_init__(self) -> None:
        if self.k < 1:  # the page bounds a client may ask for (MAX_K, MAX_OFFSET) are checked where it asks
            raise ValueError(f"k must be at least 1, not {self.k}")
        if self.offset < 0:
            raise ValueError(f"offset must not be negative, not {self.offset}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.sort not in SORTS:
            raise QueryError("sort", f"sort must be one of {', '.join(SORTS)}, not {self.sort!r}")

    @property
    def by_relevance(self) -> bool:
        return self.sort == RELEVANCE

    @property
    def pool_depth(self) -> int:
        """How many of the most relevant matches a sorted listing orders: every one reaching
        `min_score` (down to MAX_DEPTH) when it is given, else the SORT_POOL most relevant."""
        return MAX_DEPTH if self.min_score is not None else SORT_POOL

    def fingerprint(self) -> str:
        """What the ranking depends on besides the query vector (cursors bind to it)."""
        return "|".join((self.filters.key(), self.sort, repr(self.min_score), str(self.regions),
                         ",".join(map(str, sorted(self.exclude))), str(self.verify is not None), self.rerank))

    def listed(self, total: int) -> int:
        """How many results the listing holds, of `total` ranked matches (a sort other than
        relevance lists at most `pool_depth` of them)."""
        return total if self.by_relevance else min(total, self.pool_depth)

    @property
    def depth(self) -> int:
        """How many ranked results the page needs: those before it and its own."""
        return self.k + self.offset

    def candidates(self, extra: int = 0) -> "SearchQuery":
        """The query for the ranked pool a page is cut from: its depth (plus `extra`), and at
        least the candidates verification looks at, from the first result."""
        depth = self.depth + extra if self.by_relevance else self.pool_depth
        if self.verify is not None:
            depth = max(depth, self.verify.candidates)
        # A sorted listing's pool is fetched by relevance (verification looks at the most
        # relevant) and ordered by its key when the page is cut (`Library.sorted_results`).
        return replace(self, k=depth, offset=0, sort=RELEVANCE, cursor=None)

    def admits(self, score: float) -> bool:
        """Whether a result scoring `score` reaches `min_score` (always, without one)."""
        return self.min_score is None or round(score, SCORE_DIGITS) >= self.min_score

    def cut(self, results: tuple) -> tuple:
        """This query's page of ranked `results`: those reaching min_score, from offset, k of them."""
        kept = tuple(r for r in results if self.admits(r.score)) if self.min_score is not None else tuple(results)
        return kept[self.offset : self.offset + self.k]
