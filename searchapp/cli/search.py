"""`loupe search`: by text, or by image with query restoration and verification."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TextIO

from indexer.errors import ConfigError, NotIndexedError
from indexer.factory import load_embedder, open_library
from indexer.query import MAX_K, MAX_OFFSET, SearchQuery

from ..settings import ServiceSettings
from .arguments import bounded_int
from .output import print_json


def register(commands: argparse._SubParsersAction) -> None:
    from ..restoration.stages import MODES

    search = commands.add_parser("search", help="search by text or by image")
    search.add_argument("text", nargs="?", metavar="TEXT",
                        help="words; `beach 2:sunset -people` weights and subtracts terms (docs/queries.md)")
    search.add_argument("--image", type=Path, metavar="FILE",
                        help="search with this picture (with TEXT too: the picture and the words combined)")
    search.add_argument("-k", type=bounded_int(1, MAX_K), default=10,
                        help=f"number of results, 1 to {MAX_K} (default 10; more is an error)")
    search.add_argument("--offset", type=bounded_int(0, MAX_OFFSET), default=0,
                        help=f"results to skip before the first one shown, 0 to {MAX_OFFSET} (default 0)")
    search.add_argument("--no-regions", action="store_true",
                        help="with --image: match whole pictures only, not their regions")
    search.add_argument("--verify", choices=("on", "off"), default=None,
                        help="with --image: verify the top results with local features (default LOUPE_VERIFY: on)")
    search.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LOUPE_DEVICE)")
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.add_argument("--restore", choices=MODES, default="auto",
                        help="with --image: reconstruct a damaged query first (default auto: the stages that "
                             "help for what is detected; off; or one stage by name)")
    search.add_argument("--rerank", choices=("off", "diffusion"), default="off",
                        help="diffusion: re-rank over the collection's similarity graph (default off)")
    add_library_options(search)
    search.set_defaults(handler=cmd_search, service_settings=True)


def add_library_options(parser: argparse.ArgumentParser) -> None:
    """The filters, sort and cursor of a search (`indexer.filters`; docs/library.md)."""
    group = parser.add_argument_group("filters and order")
    group.add_argument("--folder", action="append", metavar="PATH",
                       help="only pictures in this folder or below it (repeat for several)")
    group.add_argument("--taken-after", metavar="DATE", help="taken on or after this ISO date or datetime")
    group.add_argument("--taken-before", metavar="DATE", help="taken on or before this ISO date or datetime")
    group.add_argument("--format", action="append", metavar="FORMAT", help="jpeg, png, heic... (repeat for several)")
    group.add_argument("--min-width", metavar="PIXELS", help="only pictures at least this wide")
    group.add_argument("--min-height", metavar="PIXELS", help="only pictures at least this high")
    group.add_argument("--camera", action="append", metavar="TEXT",
                       help='a case-insensitive part of the camera\'s "make model" (repeat for several)')
    group.add_argument("--sort", default="relevance", metavar="ORDER",
                       help="relevance (default), taken (oldest first), -taken (newest first: write --sort=-taken), size (largest first)")
    group.add_argument("--cursor", metavar="CURSOR", help="continue after the page whose --json gave this `next`")


def library_query(args) -> dict:
    """The filters, sort and cursor the options ask for, as SearchQuery fields (a QueryError,
    naming the parameter, for a bad one)."""
    from indexer.filters import parse_filter, parse_sort

    given = {"folder": args.folder or [], "taken_after": [args.taken_after], "taken_before": [args.taken_before],
             "format": args.format or [], "min_width": [args.min_width], "min_height": [args.min_height],
             "camera": args.camera or []}
    return {"filters": parse_filter(given), "sort": parse_sort(args.sort), "cursor": args.cursor}


def cmd_search(service: ServiceSettings, args, out: TextIO) -> int:
    from indexer.embedder import resolve_device

    from ..restoration.pipeline import Restorers, restored_lookup

    # Built before anything else: a bad device stops every search, text ones too (a bad
    # LOUPE_RESTORE_AUTO already stopped the settings).
    settings = service.core
    restorers = Restorers(service.restore, settings.home, resolve_device(args.device or settings.device))
    if args.text is None and args.image is None:
        raise ConfigError("give TEXT, --image FILE, or both")
    if args.text is not None and not args.text.strip():
        raise ConfigError("the search text is empty")
    terms = _search_terms(args)  # None: a plain text, or a picture alone
    k = args.k  # 1 to MAX_K: the parser refuses anything else (never clamped)
    narrowing = library_query(args)  # refused before any work
    library = open_library(settings)
    if library.stored_identity() is None:
        raise NotIndexedError("nothing is indexed yet: run `loupe index PATH` first")
    embedder = load_embedder(settings, args.device)
    library.bind_model(embedder.identity)
    if terms is not None:
        return _search_combined(library, embedder, terms, args, SearchQuery(k=k, offset=args.offset), out)
    restoration = None
    if args.image is not None:
        from indexer.images import DecodeLimits, read_file
        from indexer.verify import VerifyOptions

        data = read_file(Path(args.image), DecodeLimits()).data
        wanted = settings.verify if args.verify is None else args.verify == "on"
        verify = VerifyOptions(candidates=settings.verify_candidates) if wanted else None
        query = SearchQuery(k=k, offset=args.offset, regions=not args.no_regions, verify=verify, rerank=args.rerank,
                            **narrowing)
        page, report = restored_lookup(library, embedder, data, query, mode=args.restore, restorers=restorers)
        restoration = {**report.as_dict(), "reconstruction": None}
    else:
        t0 = time.perf_counter()
        page = library.search(embedder.encode_texts([args.text]), SearchQuery(k=k, offset=args.offset, rerank=args.rerank, **narrowing),
                              started=t0)
    if args.json:
        from ..urls import Urls  # the web URLs of each result, as the API gives them

        print_json({**Urls.offline().page_json(page), **({"restoration": restoration} if restoration is not None else {})},
                   out)
        return 0
    if restoration is not None:
        print(_restoration_line(restoration), file=out)
    if embedder.identity.caveat():
        print(f"note: {embedder.identity.caveat()}", file=out)
    if not page.results:
        print("no results", file=out)
    if page.copy_found is False:
        print("no copy of this picture is in the collection; the most similar pictures:", file=out)
    verified = next((r for r in page.results if r.verification is not None), None)
    if page.copy_found and verified is not None:
        print(f"verdict: a copy is in the collection (id {verified.id}): {verified.verification.describe()}", file=out)
    for rank, result in enumerate(page.results, start=args.offset + 1):
        label = f"  [{result.match}{' in region ' + 'x'.join(map(str, result.region.as_list())) if result.region else ''}]" \
            if result.match else ""
        print(f"{rank:4d}  {result.score:7.4f}  {result.path}  ({result.width}x{result.height}, id {result.id}){label}",
              file=out)
        if result.verification is not None:
            print(f"      verified: {result.verification.describe()} ({_verification_facts(result.verification)})",
                  file=out)
    if page.next:
        print(f"more: add --cursor {page.next}", file=out)
    return 0


def _search_terms(args):
    """The combined query TEXT asks for (`indexer.combine`): None for a plain text alone or a
    picture alone (the searches they always were). A combined query with a picture is never
    restored or verified, so naming a stage or --verify on with it is an error."""
    from indexer.combine import parse_terms

    if args.text is None:
        return None
    terms = parse_terms(args.text, image=args.image is not None)
    if args.image is None:
        return None if terms.plain else terms
    if args.restore not in ("auto", "off"):
        raise ConfigError(f"--restore {args.restore} cannot be combined with TEXT: a picture with words is not restored")
    if args.verify == "on":
        raise ConfigError("--verify on cannot be combined with TEXT: a picture with words looks for similar "
                          "pictures, not copies")
    return terms


def _search_combined(library, embedder, terms, args, query: SearchQuery, out: TextIO) -> int:
    """`loupe search` of a combined query: the words' terms, with the --image picture when given."""
    from indexer.combine import combined_search, picture_vector
    from indexer.images import DecodeLimits, read_file

    t0 = time.perf_counter()
    image_vector = None
    if args.image is not None:
        image_vector = picture_vector(library, embedder, read_file(Path(args.image), DecodeLimits()).data,
                                      DecodeLimits())
    page = combined_search(library, embedder, terms, query, image_vector, started=t0)
    combined = terms.as_dict(image=image_vector is not None)
    if args.json:
        from ..urls import Urls

        print_json({**Urls.offline().page_json(page), "combined": combined}, out)
        return 0
    picture = f" + the picture ({combined['image_weight']:+g})" if image_vector is not None else ""
    print(f"query: {terms.describe()}{picture}", file=out)
    if embedder.identity.caveat():
        print(f"note: {embedder.identity.caveat()}", file=out)
    if not page.results:
        print("no results", file=out)
    for rank, result in enumerate(page.results, start=args.offset + 1):
        print(f"{rank:4d}  {result.score:7.4f}  {result.path}  ({result.width}x{result.height}, id {result.id})",
              file=out)
    return 0


def _verification_facts(found) -> str:
    return (f"{found.inliers} inliers; {found.overlap_query:.0%} of the query, {found.overlap_result:.0%} of the "
            f"result; scale {found.scale:.2f}; {found.relation}")


def _restoration_line(report: dict) -> str:
    detected = ", ".join(report.get("detected") or []) or "nothing"
    applied = ", ".join(report.get("applied") or []) or "no stage"
    skipped = "".join(f"; skipped {stage}: {why}" for stage, why in (report.get("skipped") or {}).items())
    return f"restoration: detected {detected}; ran {applied} ({report.get('ms', 0):.0f} ms){skipped}"
