"""Reverse lookup of a picture: decode ▸ embed ▸ whole and regional kNN ▸ catalog join ▸
match labels. The plain lookup; the service, `loupe search --image` and the robustness benchmark
go through `searchapp.restoration.pipeline.restored_lookup`, which answers the same page when no
restoration stage runs."""

from __future__ import annotations

import time
from dataclasses import replace

from .images import DecodeLimits, decode_image
from .library import Library, SearchPage


def reverse_lookup(library: Library, embedder, data: bytes, k: int, offset: int = 0, regions: bool = True,
                   limits: DecodeLimits = DecodeLimits(),
                   timings: dict[str, float] | None = None) -> SearchPage:
    """The indexed pictures nearest to the picture in `data`, labelled exact / near-duplicate /
    similar. `embedder` is anything with `prepare`, `encode_batch` and `image_size`;
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
    page = library.search(query, k, offset, started=t0, regions=regions)
    lap("knn+join")
    page = library.label(page, decoded.sha256, lambda: decode_image(data, limits).image,
                         (decoded.width, decoded.height))
    lap("label")
    return replace(page, took_ms=(time.perf_counter() - t0) * 1000)
