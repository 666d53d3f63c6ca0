"""Reverse lookup of a picture: decode ▸ embed ▸ whole and regional kNN ▸ catalog join ▸
verify (local features) ▸ rank ▸ label. `ImageLookup` holds one query's steps and `Clock` times
them; `reverse_lookup` runs them in order, and `searchapp.restoration.pipeline.restored_lookup`
runs the same steps with restoration between the search and the ranking (the path the CLI, the
service and the benchmarks take), so that it answers this page when no restoration stage runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .images import DecodedImage, DecodeLimits, decode_image
from .library import Calibration, Library, SearchPage, SearchResult
from .query import SearchQuery
from .verify import VerifyOptions, VerifyReport

# The steps every image lookup times (a restored lookup adds its own, named after its stages).
LOOKUP_STEPS = ("decode", "embed", "knn+join", "verify", "rank", "label")


class Clock:
    """Each step's milliseconds, lap by lap, into `times` (the caller's dict when given)."""

    def __init__(self, times: dict[str, float] | None = None):
        self.times = times if times is not None else {}
        self.start = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = (now - self.last) * 1000
        self.last = now

    def total(self) -> float:
        """Milliseconds since the clock started."""
        return (time.perf_counter() - self.start) * 1000


@dataclass
class ImageLookup:
    """One picture's lookup as it goes: the decoded query, its embedding, the calibration read
    once for the whole query, the ranked pool (`results`) and, with verification, the verifier
    that ranks it. Made by `embed`; `search`, `verify` and `page` are the steps after it."""

    library: Library
    embedder: object  # anything with `prepare`, `encode_batch` and `image_size`
    data: bytes
    query: SearchQuery
    limits: DecodeLimits
    clock: Clock
    calibration: Calibration
    decoded: DecodedImage
    pixels: np.ndarray  # the model input
    vector: np.ndarray  # its embedding, one row
    raw: SearchPage | None = None  # what the query as given found
    results: tuple[SearchResult, ...] = ()
    verifier: "CandidateVerifier | None" = None

    @classmethod
    def embed(cls, library: Library, embedder, data: bytes, query: SearchQuery,
              limits: DecodeLimits = DecodeLimits(), timings: dict[str, float] | None = None) -> "ImageLookup":
        """Decode and embed the picture in `data` (`timings` receives each step's milliseconds)."""
        clock = Clock(timings)
        calibration = library.calibration()
        decoded = decode_image(data, limits, draft_size=library.draft_size(embedder.image_size))
        clock.lap("decode")
        pixels = embedder.prepare(decoded.image)
        vector = embedder.encode_batch([pixels])
        clock.lap("embed")
        query = library.resume(vector, query)  # a cursor becomes its offset (or is refused)
        return cls(library, embedder, data, query, limits, clock, calibration, decoded, pixels, vector)

    def search(self, extra: int = 0) -> SearchPage:
        """kNN and catalog join of the query as given, deep enough for the page (plus `extra`)
        and for verification's candidates; the pool starts as what it found."""
        self.raw = self.library.search(self.vector, self.query.candidates(extra))
        self.results = self.raw.results
        self.clock.lap("knn+join")
        return self.raw

    def search_vector(self, vector: np.ndarray, extra: int = 0) -> SearchPage:
        """The same search for another query vector (a reconstruction's)."""
        return self.library.search(vector, self.query.candidates(extra))

    def verify(self) -> None:
        """With verification asked for, verify the pool's top candidates (and the mirrored
        query's, when nothing verifies); the pool becomes everything proposed."""
        if self.query.verify is None:
            return
        self.verifier = CandidateVerifier(self.library, self.decoded, self.query.verify,
                                          self.calibration.inliers.inliers)
        self.verifier.verify_lookup(self.results, self.embedder, self.query)
        self.results = tuple(self.verifier.pool)
        self.clock.lap("verify")

    def page(self) -> SearchPage:
        """Rank the pool (verified copies first), cut the query's page from it and label it."""
        results, report = self.results, None
        if self.verifier is not None:
            report = self.verifier.report
            results = rank_verified(results, report, self.decoded.sha256)
            self.clock.lap("rank")
        results = self.library.sorted_results(results, self.query.sort)  # relevance: as ranked
        total = self.query.listed(self.raw.total)
        page = SearchPage(self.query.cut(results), total=total, took_ms=0.0)
        page = replace(page, next=self.library.next_cursor(self.vector, self.query, len(page.results), total))
        page = self.library.label(page, self.calibration.match, self.decoded.sha256,
                                  lambda: decode_image(self.data, self.limits).image,
                                  (self.decoded.width, self.decoded.height), verified=report)
        verify = self.query.verify
        summary = {"mode": "off"} if report is None else report.as_dict(self.calibration.inliers.inliers,
                                                                        verify.candidates)
        self.clock.lap("label")
        return replace(page, verify=summary, took_ms=self.clock.total())


def reverse_lookup(library: Library, embedder, data: bytes, query: SearchQuery,
                   limits: DecodeLimits = DecodeLimits(),
                   timings: dict[str, float] | None = None) -> SearchPage:
    """`query`'s page of the indexed pictures nearest to the picture in `data`, labelled exact /
    near-duplicate / similar. With `query.verify`, the top candidates are verified geometrically
    and verified copies rank first; `timings`, when given, receives each step's milliseconds."""
    with library.one_generation():  # the cursor read and the one written bind to one state
        lookup = ImageLookup.embed(library, embedder, data, query, limits, timings)
        lookup.search()
        lookup.verify()
        return lookup.page()


class CandidateVerifier:
    """One query's geometric verification. The query's local features are extracted once;
    candidates are verified as lookups propose them (the raw lookup, the mirrored query, a
    reconstruction), and all of them are ranked together: verified copies first, then the
    proposals in the order they came (so a later, unverified proposal never passes an earlier
    result)."""

    def __init__(self, library: Library, decoded, options: VerifyOptions, inliers: int):
        from .features import QUERY_KEYPOINTS, extract

        self.library, self.decoded, self.options = library, decoded, options
        self.inliers = inliers  # the calibrated inlier cut-off
        self.query = extract(decoded.image, decoded.width, decoded.height, max_keypoints=QUERY_KEYPOINTS)
        self.report = VerifyReport(query_keypoints=len(self.query))
        self.pool: list[SearchResult] = []
        self.sources: dict[int, set[str]] = {}  # result id → the proposals that brought it
        self._mirrored = None  # the mirrored query's features, once needed

    @property
    def verified(self) -> bool:
        """Whether some candidate was confirmed a copy."""
        return bool(self.report.results)

    @property
    def verdict(self) -> bool | None:
        """True: a copy was verified; False: candidates were compared and none verified; None:
        nothing could be judged (a query or candidates too poor in keypoints), so the score
        cut-off decides, as it does for the labels."""
        if self.report.results:
            return True
        from .verify import MIN_KEYPOINTS

        if self.report.query_keypoints < MIN_KEYPOINTS or not self.report.checked:
            return None
        return False

    def mirrored(self):
        """The mirrored query's features, extracted on first use."""
        from .features import QUERY_KEYPOINTS, extract, mirrored_image

        if self._mirrored is None:
            self._mirrored = extract(mirrored_image(self.decoded.image), self.decoded.width,
                                     self.decoded.height, max_keypoints=QUERY_KEYPOINTS)
        return self._mirrored

    def propose(self, results: Sequence[SearchResult], source: str = "raw", flipped: bool = False) -> int:
        """Add a lookup's `results` behind those already proposed and verify its top
        `options.candidates` not yet compared (`flipped`: with the mirrored query's features
        only); how many new copies were verified."""
        for result in results:
            if result.id not in self.sources:
                self.pool.append(result)
                self.sources[result.id] = set()
            self.sources[result.id].add(source)
        before = len(self.report.results)
        fresh = [r for r in results[: self.options.candidates]
                 if r.id not in self.report.checked and r.id not in self.report.unverifiable]
        if fresh:
            query = self.mirrored() if flipped else self.query
            verify_stored(self.library, query, fresh, self.options, self.inliers,
                          mirrored=None if flipped else self.mirrored, flipped=flipped, report=self.report)
        return len(self.report.results) - before

    def verify_lookup(self, results: Sequence[SearchResult], embedder=None,
                      query: SearchQuery = SearchQuery(regions=True)) -> None:
        """Verify the raw lookup's `results`; when nothing verifies and `embedder` is given,
        also search (as `query` does) with the mirrored query's embedding and verify what that
        finds."""
        from .features import mirrored_image

        self.propose(results, "raw")
        if self.verified or embedder is None or not self.options.mirror_search or not len(self.query):
            return
        vector = embedder.encode_batch([embedder.prepare(mirrored_image(self.decoded.image))])
        found = self.library.search(vector, replace(query, k=self.options.candidates, offset=0, sort="relevance", cursor=None)).results
        self.propose(found, "mirrored", flipped=True)
        self.report.mirror_searched = True

    def ranked(self, query_sha256: str | None = None) -> tuple[SearchResult, ...]:
        """Every proposed result: the query's own file, verified copies, then the rest in order."""
        return rank_verified(self.pool, self.report, query_sha256)


def verify_stored(library: Library, query, results: Sequence[SearchResult], options: VerifyOptions, inliers: int,
                  mirrored=None, flipped: bool = False, report: VerifyReport | None = None) -> VerifyReport:
    """Verify the top candidates of `results` against query features `query`, a copy from
    `inliers` inliers on (see `indexer.verify.verify_candidates`)."""
    from .verify import verify_candidates

    top = [r.id for r in results[: options.candidates]]
    stored = library.features_of(top)
    return verify_candidates(query, [(i, stored.get(i)) for i in top], inliers,
                             mirrored=mirrored, options=options, flipped=flipped, report=report)


def rank_verified(results: Sequence[SearchResult], report: VerifyReport,
                  query_sha256: str | None = None) -> tuple[SearchResult, ...]:
    """Same file first, verified copies next (most inliers first), the rest in their order."""
    def key(item):
        position, result = item
        if query_sha256 is not None and result.content_hash == query_sha256:
            return (0, 0, position)
        found = report.results.get(result.id)
        return (1, -found.inliers, position) if found is not None else (2, 0, position)

    return tuple(result for _, result in sorted(enumerate(results), key=key))
