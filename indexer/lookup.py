"""Reverse lookup of a picture: decode ▸ embed ▸ whole and regional kNN ▸ catalog join ▸
verify (local features) ▸ match labels. The plain lookup; the service, `loupe search --image`
and the robustness benchmark go through `searchapp.restoration.pipeline.restored_lookup`, which
answers the same page when no restoration stage runs."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

from .images import DecodeLimits, decode_image
from .library import Library, SearchPage, SearchResult
from .verify import VerifyOptions, VerifyReport


def reverse_lookup(library: Library, embedder, data: bytes, k: int, offset: int = 0, regions: bool = True,
                   limits: DecodeLimits = DecodeLimits(),
                   timings: dict[str, float] | None = None,
                   verify: VerifyOptions | None = None) -> SearchPage:
    """The indexed pictures nearest to the picture in `data`, labelled exact / near-duplicate /
    similar. `embedder` is anything with `prepare`, `encode_batch` and `image_size`; with
    `verify`, the top candidates are verified geometrically and verified copies rank first;
    `timings`, when given, receives each stage's milliseconds."""
    clock = [time.perf_counter()]
    t0 = clock[0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[name] = (now - clock[0]) * 1000
        clock[0] = now

    decoded = decode_image(data, limits, draft_size=library.draft_size(embedder.image_size))
    lap("decode")
    query = embedder.encode_batch([embedder.prepare(decoded.image)])
    lap("embed")
    depth = k + offset if verify is None else max(k + offset, verify.candidates)
    page = library.search(query, depth, 0, started=t0, regions=regions)
    lap("knn+join")
    results, report = page.results, None
    if verify is not None:
        results, report = verify_results(library, results, decoded, verify, query_sha256=decoded.sha256,
                                         embedder=embedder, regions=regions)
        lap("verify")
    page = replace(page, results=tuple(results[offset : offset + k]))
    page = finish_page(library, page, decoded, data, limits, report, verify)
    lap("label")
    return replace(page, took_ms=(time.perf_counter() - t0) * 1000)


def verify_results(library: Library, results: Sequence[SearchResult], decoded, options: VerifyOptions,
                   query_sha256: str | None = None, embedder=None,
                   regions: bool = True) -> tuple[tuple[SearchResult, ...], VerifyReport]:
    """Verify the top `options.candidates` of `results` against the decoded query picture;
    the results re-ranked (the query's own file first, then verified copies by inliers, then the
    rest in their order) and the report. With `embedder` and `options.mirror_search`, a query
    that verifies nothing is also searched mirrored, and the new candidates verified mirrored."""
    verifier = CandidateVerifier(library, decoded, options)
    verifier.verify_lookup(results, embedder, regions)
    return verifier.ranked(query_sha256), verifier.report


class CandidateVerifier:
    """One query's geometric verification. The query's local features are extracted once;
    candidates are verified as lookups propose them (the raw lookup, the mirrored query, a
    reconstruction), and all of them are ranked together: verified copies first, then the
    proposals in the order they came (so a later, unverified proposal never passes an earlier
    result)."""

    def __init__(self, library: Library, decoded, options: VerifyOptions):
        from .features import QUERY_KEYPOINTS, extract

        self.library, self.decoded, self.options = library, decoded, options
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
            verify_stored(self.library, query, fresh, self.options,
                          mirrored=None if flipped else self.mirrored, flipped=flipped, report=self.report)
        return len(self.report.results) - before

    def verify_lookup(self, results: Sequence[SearchResult], embedder=None, regions: bool = True) -> None:
        """Verify the raw lookup's `results`; when nothing verifies and `embedder` is given,
        also search with the mirrored query's embedding and verify what that finds."""
        from .features import mirrored_image

        self.propose(results, "raw")
        if self.verified or embedder is None or not self.options.mirror_search or not len(self.query):
            return
        vector = embedder.encode_batch([embedder.prepare(mirrored_image(self.decoded.image))])
        found = self.library.search(vector, self.options.candidates, 0, regions=regions).results
        self.propose(found, "mirrored", flipped=True)
        self.report.mirror_searched = True

    def ranked(self, query_sha256: str | None = None) -> tuple[SearchResult, ...]:
        """Every proposed result: the query's own file, verified copies, then the rest in order."""
        return rank_verified(self.pool, self.report, query_sha256)


def verify_stored(library: Library, query, results: Sequence[SearchResult], options: VerifyOptions,
                  mirrored=None, flipped: bool = False, report: VerifyReport | None = None) -> VerifyReport:
    """Verify the top candidates of `results` against query features `query` (see
    `indexer.verify.verify_candidates`)."""
    from .verify import verify_candidates

    top = [r.id for r in results[: options.candidates]]
    stored = library.features_of(top)
    return verify_candidates(query, [(i, stored.get(i)) for i in top], library.inlier_cutoff().inliers,
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


def finish_page(library: Library, page: SearchPage, decoded, data: bytes, limits: DecodeLimits,
                report: VerifyReport | None, verify: VerifyOptions | None) -> SearchPage:
    """Label `page` (with the verification `report` when verification ran) and say what ran."""
    page = library.label(page, decoded.sha256, lambda: decode_image(data, limits).image,
                         (decoded.width, decoded.height), verified=report)
    summary = {"mode": "off"} if report is None else report.as_dict(library.inlier_cutoff().inliers,
                                                                    verify.candidates)
    return replace(page, verify=summary)
