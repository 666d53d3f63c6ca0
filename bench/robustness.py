"""Robustness of reverse-image lookup to damaged queries.

Indexes a corpus of photographs into a temporary LOUPE_HOME, makes seeded damaged queries
(bench/damage.py: noise, crops, re-compression, blur, downscale, rotation, overlaid text, a
strong combination) from the corpus pictures of one part (`--query-part`), runs each through
the real search path (encode the query bytes, decode, embed, kNN, catalog join), and prints per
kind recall@1, recall@10 and MRR of the original, the false-match rate on held-out photographs
that are not in the corpus, and p50 latency per stage, for each configuration asked
(`--stages off,auto,blur`). Differences between configurations come with paired 95% intervals
from a bootstrap over pictures (each picture's queries resampled together). It also reports how match
labels behave: how often the original is found *and* labelled a copy (exact or
near-duplicate) with the cut-off the index calibrated for itself, and how often a held-out
photograph is wrongly labelled a copy (the false-match rate of that cut-off).

    python bench/robustness.py --quick                        # scikit-image's photographs (CI)
    python bench/robustness.py --corpus DIR --heldout DIR/report --query-part report   # bench/README.md

Held-out rules. The corpus folder may hold parts (bench/gather_photos.py makes `tune` and
`report`): the whole corpus is indexed, and only the pictures of `--query-part` are queried.
Tune anything (region settings, policies) with `--query-part tune`; report with `report`.
Restorers (`--restorers HOME`) must be trained in a home that indexed the tune part only: the
benchmark refuses to run when a queried picture is in that home's catalog. The damage here is
written apart from the restorers' training damage, whose random families leave out these
kinds' parameters (searchapp.restoration.corruptions.HELD_OUT). Kinds without randomness make
one query per picture.

Configurations (`--stages`): `whole` (the whole-image index alone, no restoration), and each
query-restoration mode on the regional index: `off` (the query as given), `auto` (what the
service does by default), or one stage by name (`blur`, the trivial denoising baseline;
`pixel` and `pixel-ddim`, diffusion purification; `embedding`, the embedding-space diffusion
model; `qe`, αQE query expansion; `outpaint`, crop reconstruction). Stages with models use those
trained in `--restorers HOME` (`loupe train-restorer` there, on the same corpus) or configured
by LOUPE_RESTORE_MODEL / LOUPE_OUTPAINT_MODEL. `MODE+verify` adds geometric verification of the
top `--verify-candidates` results (`verify` alone is `off+verify`): near-duplicate then needs
local-feature evidence, and a reconstruction's proposals must verify to rise; without it a
configuration labels by the embedding score alone. `MODE@PENALTY` sets the region penalty. The
corpus is indexed once per index kind, and the time and size of each index are printed; for
`auto`, how often each condition was detected and each stage ran, by kind, and the time it
added (p50/p95). A restoring configuration is checked query by query against the same
configuration with restoration off: a query whose original that one ranks first must not lose
it to a result that is not a verified copy (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from common import DEFAULT_HOME, bench_workspace
from damage import KINDS, damage, queries_per_picture
from provenance import print_header, print_result
from searchapp.restoration.stages import CONDITIONS, MODES

VERIFY = "verify"
CONFIGS = ("whole",) + MODES + (VERIFY,)
REGIONAL_CONFIGS = frozenset(MODES) | {VERIFY}
CONFIG_SYNTAX = r"(?!whole\+|verify\+)[a-z-]+(\+verify)?(@[0-9.]+)?"  # whole and verify take no +verify
VERIFY_CANDIDATES = [30]  # --verify-candidates


def query_bytes(img: Image.Image) -> bytes:
    """How the damaged query reaches the service: an uploaded PNG (JPEG kinds already carry
    their compression)."""
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)  # lossless and fast; big photographs make many queries
    return buf.getvalue()


# -- photographs ----------------------------------------------------------------------------------------
def sample_folders(work: Path) -> tuple[Path, Path]:
    """Corpus and held-out folders from scikit-image's photographs (12 and 4)."""
    from indexer.demo import SAMPLE_PHOTOS, sample_photos_dir

    source = sample_photos_dir()
    names = [n for n in SAMPLE_PHOTOS if (source / n).is_file()]
    heldout_names = {"grass.png", "gravel.png", "brick.png", "text.png"}
    corpus, heldout = work / "corpus", work / "heldout"
    for folder in (corpus, heldout):
        folder.mkdir(parents=True)
    for name in names:
        img = Image.open(source / name).convert("RGB")
        (heldout if name in heldout_names else corpus).joinpath(Path(name).stem + ".png").write_bytes(query_bytes(img))
    return corpus, heldout


def photos_in(folder: Path) -> list[Path]:
    from indexer.images import iter_image_files

    return list(iter_image_files([folder]))


# -- measuring ------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    picture: int  # index of the queried picture: the bootstrap resamples pictures
    seed: int
    rank: int | None  # 1-based rank of the original, None if not in the top k
    top_score: float
    copy_found: bool  # the service said a result is the query's picture
    copy_is_original: bool  # ...and the original is among the results labelled so
    ms: dict[str, float]
    detected: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    top_found_by: str | None = None  # how the top result was found after a restoration (raw, restored, both)
    top_id: int | None = None
    top_verified: bool = False  # the top result is a verified copy
    restore_ms: float = 0.0  # what restoration added to the query (detection, stages, second lookup)
    miss: str | None = None  # verifying configurations: why the original is not first and labelled a copy


@dataclass
class IndexedCorpus:
    """One LOUPE_HOME holding the corpus, indexed with one region setting."""

    library: object
    embedder: object
    restorers: object
    original_id: dict[Path, int]
    seconds: float
    embedded: int
    vectors: int
    index_bytes: int


def mode_of(config: str) -> str:
    """A configuration's restoration mode (`whole` for the whole-image index): `off@0.01` is
    `off` with region penalty 0.01, to compare region penalties on one index, query by query;
    `auto+verify` is `auto` with verification; `verify` is `off` with verification."""
    mode = config.split("@", 1)[0].split("+", 1)[0]
    return "off" if mode == VERIFY else mode


def verifies(config: str) -> bool:
    """Whether the configuration verifies its candidates geometrically."""
    return config.split("@", 1)[0] in (VERIFY,) or "+verify" in config


def unrestored_twin(config: str, configs) -> str | None:
    """The configuration among `configs` that is `config` with restoration off (its raw answers)."""
    penalty = "@" + config.split("@", 1)[1] if "@" in config else ""
    names = ("off+verify", VERIFY) if verifies(config) else ("off",)
    return next((name + penalty for name in names if name + penalty in configs), None)


def is_regional(config: str) -> bool:
    return mode_of(config) in REGIONAL_CONFIGS


@contextmanager
def region_penalty(library, config: str):
    """The library with `config`'s region penalty (`MODE@PENALTY`) while the block runs."""
    if "@" not in config:
        yield
        return
    saved = library.settings
    library.settings = replace(saved, regions=replace(saved.regions, penalty=float(config.split("@", 1)[1])))
    try:
        yield
    finally:
        library.settings = saved


def search(index: IndexedCorpus, data: bytes, config: str, k: int):
    """The service's image-search path (`searchapp.restoration.pipeline.restored_lookup`)."""
    from searchapp.restoration.pipeline import restored_lookup

    from indexer.query import SearchQuery
    from indexer.verify import VerifyOptions

    ms: dict[str, float] = {}
    mode = mode_of(config)
    verify = VerifyOptions(candidates=VERIFY_CANDIDATES[0]) if verifies(config) else None
    query = SearchQuery(k=k, regions=is_regional(config), verify=verify)
    page, report = restored_lookup(index.library, index.embedder, data, query,
                                   mode="off" if mode == "whole" else mode, restorers=index.restorers, timings=ms)
    return page, report, ms


MISSES = ("not proposed, would verify", "not proposed, would not verify", "proposed, too few inliers",
          "verified, outranked", "unverifiable", "first, not labelled a copy")


def why_missed(index: IndexedCorpus, data: bytes, want: int, rank: int | None) -> str:
    """Why a verifying lookup did not answer the original first as a copy (one of MISSES): was it
    among the candidates the raw lookup (or its mirror image's) proposes, and does it verify
    against the query at all (straight or mirrored)? A pair too poor in keypoints is
    `unverifiable` (the score cut-off labels it); an original ranked first but not labelled a
    copy is `first, not labelled a copy`."""
    from indexer.features import QUERY_KEYPOINTS, extract, mirrored_image
    from indexer.images import decode_image
    from indexer.query import SearchQuery
    from indexer.verify import MIN_KEYPOINTS, verify_pair

    if rank == 1:
        return MISSES[5]
    library, embedder = index.library, index.embedder
    stored = library.features_of([want]).get(want)
    decoded = decode_image(data, draft_size=library.draft_size(embedder.image_size))
    query = extract(decoded.image, decoded.width, decoded.height, max_keypoints=QUERY_KEYPOINTS)
    if stored is None or len(stored) < MIN_KEYPOINTS or len(query) < MIN_KEYPOINTS:
        return MISSES[4]
    proposed, inliers = False, 0
    for mirrored in (False, True):
        image = mirrored_image(decoded.image) if mirrored else decoded.image
        vector = embedder.encode_batch([embedder.prepare(image)])
        found = library.search(vector, SearchQuery(k=VERIFY_CANDIDATES[0], regions=True)).results
        proposed = proposed or want in [r.id for r in found]
        features = extract(image, decoded.width, decoded.height, max_keypoints=QUERY_KEYPOINTS) if mirrored else query
        fit = verify_pair(features, stored, mirrored=mirrored)
        inliers = max(inliers, fit.inliers if fit is not None else 0)
    verifies = inliers >= library.calibration().inliers.inliers
    if not proposed:
        return MISSES[0] if verifies else MISSES[1]
    return MISSES[3] if verifies else MISSES[2]


def build_index(work: Path, name: str, env: dict, corpus_dir: Path, regions: str,
                penalty: float | None, restorers_home: Path | None) -> IndexedCorpus:
    from indexer.factory import load_embedder, open_library
    from indexer.jobs import IndexJob, IndexOptions
    from indexer.settings import Settings
    from searchapp.restoration.pipeline import Restorers
    from searchapp.settings import RestoreSettings

    home = work / name
    home.mkdir()
    (home / "models").symlink_to((Path(env["LOUPE_HOME"]) / "models").resolve(), target_is_directory=True)
    if restorers_home is not None:
        (home / "restorers").symlink_to((restorers_home / "restorers").resolve(), target_is_directory=True)
    settings = Settings.from_env({**env, "LOUPE_HOME": str(home), "LOUPE_REGIONS": "" if regions == "default" else regions})
    if penalty is not None:
        settings = replace(settings, regions=replace(settings.regions, penalty=penalty))
    embedder = load_embedder(settings)
    library = open_library(settings)
    t0 = time.perf_counter()
    summary = IndexJob(library, embedder, IndexOptions(progress=False)).run([corpus_dir])
    seconds = time.perf_counter() - t0
    original_id = {}
    for path in photos_in(corpus_dir):
        record = library.image_by_path(str(path))
        if record is not None and record.status != "failed":
            # The id a query should find: its own, or the original's for a byte-duplicate.
            original_id[path] = record.duplicate_of or record.id
    vectors = len(library.store) + len(library.regions.store)
    size = sum(p.stat().st_size for p in (settings.index_path, settings.regions_path) if p.exists())
    restorers = Restorers(RestoreSettings.from_env(env), home, "cpu")
    return IndexedCorpus(library, embedder, restorers, original_id, seconds, summary.embedded, vectors, size)


def bootstrap_diff(a: np.ndarray, b: np.ndarray, groups: np.ndarray, rounds: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of b − a over queries, with a paired 95% interval from a bootstrap over `groups`
    (the queried picture of each query): a picture's queries are resampled together, since
    queries made from one picture are not independent."""
    rng = np.random.default_rng(seed)
    diff = b.astype(float) - a.astype(float)
    labels, group_of = np.unique(groups, return_inverse=True)
    sums = np.bincount(group_of, weights=diff, minlength=len(labels))
    counts = np.bincount(group_of, minlength=len(labels)).astype(float)
    picks = rng.integers(0, len(labels), size=(rounds, len(labels)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def query_pictures(corpus_dir: Path, part: str | None) -> list[Path]:
    """The corpus pictures to query: those under corpus/<part>, or all of them without a part."""
    if part is None:
        return photos_in(corpus_dir)
    folder = corpus_dir / part
    if not folder.is_dir():
        raise SystemExit(f"robustness: {folder} does not exist (--query-part names a subfolder of --corpus)")
    return photos_in(folder)


def refuse_trained_on_queries(restorers_home: Path | None, pictures: list[Path]) -> None:
    """Stop when a queried picture is in the catalog of the home the restorers were trained in."""
    import sqlite3

    from indexer.images import content_hash

    if restorers_home is None:
        return
    database = restorers_home / "loupe.db"
    if not database.is_file():
        raise SystemExit(f"robustness: {database} not found: --restorers must be the LOUPE_HOME whose "
                         "indexed pictures (the tune part) trained the restorers")
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        trained = {row[0] for row in db.execute("SELECT content_hash FROM images WHERE content_hash IS NOT NULL")}
    seen = [p for p in pictures if content_hash(p.read_bytes()) in trained]
    if seen:
        raise SystemExit(f"robustness: {len(seen)} queried pictures (e.g. {seen[0].name}) are in the catalog the "
                         f"restorers in {restorers_home} were trained on: query another part")


def measure(index: IndexedCorpus, config: str, kinds, corpus: list[Path], heldout: list[Path], seeds: int,
            outcomes: dict, false_copies: dict, false_tops: dict) -> None:
    """Query every kind of damage of every queried picture, and of the held-out ones, with `config`."""
    for kind in kinds:
        rows = outcomes.setdefault((config, kind), [])
        for i, path in enumerate(corpus):
            original = Image.open(path).convert("RGB")
            for seed in range(queries_per_picture(kind, seeds)):
                rng = np.random.default_rng([i, seed, KINDS.index(kind) if kind in KINDS else 0])
                data = query_bytes(damage(original, kind, rng))
                page, report, ms = search(index, data, config, 10)
                ids = [r.id for r in page.results]
                want = index.original_id[path]
                rank = ids.index(want) + 1 if want in ids else None
                labelled = any(r.id == want and r.match in ("exact", "near-duplicate") for r in page.results)
                top = page.results[0].score if page.results else 0.0
                detected = report.detection.conditions if report.detection else ()
                first = page.results[0] if page.results else None
                miss = None
                if verifies(config) and not (rank == 1 and labelled):
                    miss = why_missed(index, data, want, rank)
                rows.append(Outcome(i, seed, rank, top, bool(page.copy_found), labelled, ms, detected,
                                    report.applied, getattr(first, "found_by", None),
                                    first.id if first else None,
                                    bool(first is not None and first.verification is not None), report.ms, miss))
        for i, path in enumerate(heldout):
            image = Image.open(path).convert("RGB")
            rng = np.random.default_rng([10_000 + i, KINDS.index(kind) if kind in KINDS else 0])
            page, _, _ = search(index, query_bytes(damage(image, kind, rng)), config, 1)
            false_copies[config].append(bool(page.copy_found))
            false_tops[config].append(page.results[0].score if page.results else 0.0)


def print_regressions(outcomes, configs, kinds, corpus: list[Path], limit: int) -> None:
    """Name the queries the baseline ranks first and another configuration does not: the picture,
    kind and seed, the rank each gave, what restoration detected and ran, and how the new top
    result was found, so that a regression can be traced to a stage."""
    base = configs[0]
    for config in configs[1:]:
        rows = [(kind, a, b) for kind in kinds for a, b in zip(outcomes[(base, kind)], outcomes[(config, kind)])
                if a.rank == 1 and b.rank != 1]
        if not rows:
            print(f"\nno query that {base!r} answers is lost by {config!r}")
            continue
        print(f"\nqueries {base!r} answers and {config!r} does not ({len(rows)}; first {min(limit, len(rows))}):")
        for kind, a, b in rows[:limit]:
            print(f"  {corpus[a.picture].name[:36]:<37}{kind:<13}seed {a.seed}  rank {a.rank} -> {b.rank or '>10'}  "
                  f"detected {','.join(b.detected) or '-'}  ran {','.join(b.applied) or '-'}  "
                  f"top found by {b.top_found_by or '-'}, score {b.top_score:.4f}, "
                  f"{'verified' if b.top_verified else 'not verified'}")


def displaced_unverified(outcomes, configs, kinds, corpus: list[Path]) -> int:
    """Queries whose original the configuration's unrestored twin ranks first and a restoring
    configuration loses to a result that is not a verified copy: the property restoration must
    keep. Prints each and returns how many there were (configurations whose twin was not run
    are not checked)."""
    total = 0
    for config in configs:
        twin = unrestored_twin(config, configs)
        if mode_of(config) in ("off", "whole") or twin is None:
            continue
        rows = [(kind, a, b) for kind in kinds for a, b in zip(outcomes[(twin, kind)], outcomes[(config, kind)])
                if a.rank == 1 and b.rank != 1 and not b.top_verified]
        total += len(rows)
        print(f"\n{config!r} against {twin!r}: {len(rows)} right answers displaced by an unverified result")
        for kind, a, b in rows:
            print(f"  {corpus[a.picture].name[:36]:<37}{kind:<13}seed {a.seed}  ran {','.join(b.applied) or '-'}  "
                  f"new top {b.top_id} found by {b.top_found_by or '-'}")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="folder of photographs to index")
    parser.add_argument("--heldout", type=Path, help="folder of photographs NOT in the corpus")
    parser.add_argument("--stages", default="whole,off",
                        help=f"configurations, comma-separated ({', '.join(CONFIGS)}); the first is the baseline")
    parser.add_argument("--restorers", type=Path, default=None,
                        help="a LOUPE_HOME whose restorers/ (loupe train-restorer) the stages use")
    parser.add_argument("--region-scales", default="", help="LOUPE_REGIONS for the regional index (default: Loupe's)")
    parser.add_argument("--region-penalty", type=float, default=None,
                        help="subtracted from region scores (default: Loupe's)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seeds", type=int, default=2,
                        help="damaged queries per picture and kind (kinds without randomness: always 1)")
    parser.add_argument("--query-part", default=None,
                        help="query only the pictures in this subfolder of --corpus (tune or report)")
    parser.add_argument("--regressions", type=int, default=20,
                        help="list up to this many queries the baseline answers and another configuration does not")
    parser.add_argument("--verify-candidates", type=int, default=30,
                        help="results verified per query by the `verify` configuration (LOUPE_VERIFY_CANDIDATES)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--home", default=DEFAULT_HOME)
    parser.add_argument("--quick", action="store_true", help="scikit-image's photographs, one seed")
    args = parser.parse_args()
    configs = [c.strip() for c in args.stages.split(",") if c.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [c for c in configs if mode_of(c) not in CONFIGS or not re.fullmatch(CONFIG_SYNTAX, c)]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    if args.quick:
        args.seeds = 1
    width = max(14, max(len(c) for c in configs) + 1)  # the configuration column of the tables
    VERIFY_CANDIDATES[0] = args.verify_candidates
    header = print_header("robustness", args, model=f"{args.model} ({args.pretrained})")

    work, env = bench_workspace("loupe-robustness-", args.home, args.model, args.pretrained)
    if args.corpus is None or args.heldout is None:
        corpus_dir, heldout_dir = sample_folders(work)
    else:
        corpus_dir, heldout_dir = args.corpus, args.heldout
    indexes: dict[str, IndexedCorpus] = {}
    for kind_of_index in sorted({"regional" if is_regional(c) else "whole" for c in configs}, reverse=True):
        regions = (args.region_scales or "default") if kind_of_index == "regional" else "off"
        indexes[kind_of_index] = built = build_index(work, kind_of_index, env, corpus_dir, regions,
                                                     args.region_penalty, args.restorers)
        calibration = built.library.calibration()
        cutoff, inliers = calibration.match, calibration.inliers
        print(f"{kind_of_index} index (regions {regions}): {built.embedded} photos in {built.seconds:.1f} s "
              f"({built.embedded / built.seconds:.2f} photos/s), {built.vectors} vectors, "
              f"{built.index_bytes / 1e6:.2f} MB of FAISS files; near-duplicate cut-offs {cutoff.whole:.4f} "
              f"(whole), {cutoff.region:.4f} (region); verification inlier cut-off "
              f"{inliers.inliers} ({inliers.basis})")
    first = next(iter(indexes.values()))
    identity = first.library.stored_identity().as_dict()
    for stage in {mode_of(c) for c in configs} - {"whole", "off", "auto"}:
        reason = first.restorers.missing(stage, identity)
        if reason is not None:
            print(f"robustness: cannot run {stage!r}: {reason} (see --restorers)", file=sys.stderr)
            return 2
    indexed = [path for path in photos_in(corpus_dir) if path in first.original_id]
    corpus = [path for path in query_pictures(corpus_dir, args.query_part) if path in first.original_id]
    refuse_trained_on_queries(args.restorers, corpus)
    heldout = photos_in(heldout_dir)
    print(f"corpus {len(indexed)} photos indexed, {len(corpus)} queried (part {args.query_part or 'all'}), "
          f"held-out {len(heldout)}, model {first.embedder.identity.describe()}, {args.seeds} seed(s) per picture "
          f"and random kind, 1 for {', '.join(k for k in kinds if queries_per_picture(k, 2) == 1)}")

    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    false_copies: dict[str, list[bool]] = {c: [] for c in configs}
    false_tops: dict[str, list[float]] = {c: [] for c in configs}
    for config in configs:
        index = indexes["regional" if is_regional(config) else "whole"]
        with region_penalty(index.library, config):
            measure(index, config, kinds, corpus, heldout, args.seeds, outcomes, false_copies, false_tops)

    print(f"\n{'config':<{width}}{'kind':<12}{'n':>5}{'R@1':>7}{'R@10':>7}{'MRR':>7}{'copy':>7}{'copy@1':>8}")
    for config in configs:
        for kind in kinds:
            rows = outcomes[(config, kind)]
            r1 = np.mean([o.rank == 1 for o in rows])
            r10 = np.mean([o.rank is not None for o in rows])
            mrr = np.mean([1.0 / o.rank if o.rank else 0.0 for o in rows])
            copy = np.mean([o.copy_is_original for o in rows])
            copy1 = np.mean([o.rank == 1 and o.copy_is_original for o in rows])
            print(f"{config:<{width}}{kind:<12}{len(rows):>5}{r1:>7.3f}{r10:>7.3f}{mrr:>7.3f}{copy:>7.3f}{copy1:>8.3f}")
    print("(copy: the original is among the results and labelled exact or near-duplicate; "
          "copy@1: it is first and labelled so)")
    for config in (c for c in configs if verifies(c)):
        print(f"\n{config}: why the original was not first and verified, by kind (queries; proposed: among the "
              f"top {VERIFY_CANDIDATES[0]} of the lookup or its mirror image's):")
        for kind in kinds:
            misses = [o.miss for o in outcomes[(config, kind)] if o.miss]
            if misses:
                print(f"  {kind:<12}" + "; ".join(f"{why} {misses.count(why)}" for why in MISSES if why in misses))

    print("\nheld-out photographs labelled a copy (false-match rate of the calibrated cut-off), by kind:")
    for config in configs:
        index = indexes["regional" if is_regional(config) else "whole"]
        flags = false_copies[config]
        per_kind = np.array(flags).reshape(len(kinds), -1).mean(axis=1) if flags else []
        worst = max(zip(per_kind, kinds))[1] if len(flags) else "-"
        cutoff = index.library.calibration().match
        print(f"  {config:<{width}} cut-offs {cutoff.whole:.4f}/{cutoff.region:.4f}  "
              f"false-match rate {np.mean(flags) if flags else float('nan'):.3f} ({len(flags)} queries; "
              f"clean {per_kind[kinds.index('clean')] if 'clean' in kinds else float('nan'):.3f}, worst kind {worst})")

    print("\nfalse matches on held-out photographs (top-1 score at or above the score that keeps 95% of "
          "correct top-1 matches):")
    for config in configs:
        correct = [o.top_score for kind in kinds for o in outcomes[(config, kind)] if o.rank == 1]
        threshold = float(np.percentile(correct, 5)) if correct else float("nan")
        tops = false_tops[config]
        rate = float(np.mean([s >= threshold for s in tops])) if tops else float("nan")
        print(f"  {config:<{width}} threshold {threshold:.4f}  false-match rate {rate:.3f} ({len(tops)} held-out queries)")

    print("\np50 latency per stage, over the queries that ran it (ms):")
    for config in configs:
        every = [o for kind in kinds for o in outcomes[(config, kind)]]
        names = list(dict.fromkeys(name for o in every for name in o.ms))
        parts = "  ".join(f"{name} {statistics.median(o.ms[name] for o in every if name in o.ms):.1f}"
                          for name in names)
        print(f"  {config:<{width}} {parts}")

    for config in (c for c in configs if mode_of(c) == "auto"):
        print(f"\n{config}: share of queries with each condition detected / each stage run, and the time "
              "restoration added (p50/p95 ms over all queries; over those where a stage ran), by kind:")
        for kind in kinds:
            rows = outcomes[(config, kind)]
            found = {c: np.mean([c in o.detected for o in rows]) for c in CONDITIONS}
            ran = {s: np.mean([s in o.applied for o in rows]) for s in sorted({s for o in rows for s in o.applied})}
            added = [o.restore_ms for o in rows]
            when = [o.restore_ms for o in rows if o.applied]
            print(f"  {kind:<10} detected " + " ".join(f"{c} {v:.2f}" for c, v in found.items())
                  + ("; ran " + " ".join(f"{s} {v:.2f}" for s, v in ran.items()) if ran else "; ran nothing")
                  + f"; added {np.percentile(added, 50):.1f}/{np.percentile(added, 95):.1f}"
                  + (f", when run {np.percentile(when, 50):.1f}/{np.percentile(when, 95):.1f}" if when else ""))

    if len(configs) > 1:
        base = configs[0]
        print(f"\nrecall@1 difference against {base!r} (paired; 95% interval from a bootstrap over pictures):")
        for config in configs[1:]:
            for kind in kinds:
                a = np.array([o.rank == 1 for o in outcomes[(base, kind)]])
                b = np.array([o.rank == 1 for o in outcomes[(config, kind)]])
                lost, won = int(np.sum(a & ~b)), int(np.sum(~a & b))
                mean, lo, hi = bootstrap_diff(a, b, np.array([o.picture for o in outcomes[(base, kind)]]))
                print(f"  {config:<{width}}{kind:<13}{mean:+.3f}  [{lo:+.3f}, {hi:+.3f}]  lost {lost}, won {won}")
        print(f"\ncopy@1 difference against {base!r} (first and labelled a copy; paired, bootstrap over pictures):")
        for config in configs[1:]:
            for kind in kinds:
                a = np.array([o.rank == 1 and o.copy_is_original for o in outcomes[(base, kind)]])
                b = np.array([o.rank == 1 and o.copy_is_original for o in outcomes[(config, kind)]])
                mean, lo, hi = bootstrap_diff(a, b, np.array([o.picture for o in outcomes[(base, kind)]]))
                print(f"  {config:<{width}}{kind:<13}{mean:+.3f}  [{lo:+.3f}, {hi:+.3f}]")
        print_regressions(outcomes, configs, kinds, corpus, args.regressions)
    displaced = displaced_unverified(outcomes, configs, kinds, corpus)

    figures = {}
    for (config, kind), rows in outcomes.items():
        figures[f"{config}.{kind}.r1"] = round(float(np.mean([o.rank == 1 for o in rows])), 4)
        figures[f"{config}.{kind}.copy"] = round(float(np.mean([o.copy_is_original for o in rows])), 4)
        figures[f"{config}.{kind}.copy1"] = round(float(np.mean([o.rank == 1 and o.copy_is_original for o in rows])), 4)
        if verifies(config):
            figures[f"{config}.{kind}.misses"] = {why: sum(o.miss == why for o in rows) for why in MISSES
                                                  if any(o.miss == why for o in rows)}
    for config in configs:
        figures[f"{config}.false_copy_rate"] = round(float(np.mean(false_copies[config])), 4) if false_copies[config] else None
    for config in (c for c in configs if mode_of(c) == "auto"):
        for kind in kinds:
            added = [o.restore_ms for o in outcomes[(config, kind)]]
            figures[f"{config}.{kind}.added_ms_p50"] = round(float(np.percentile(added, 50)), 1)
            figures[f"{config}.{kind}.added_ms_p95"] = round(float(np.percentile(added, 95)), 1)
    figures.update(queried=len(corpus), indexed=len(indexed), part=args.query_part or "all",
                   displaced_unverified=displaced)
    print_result("robustness", figures, header)
    for index in indexes.values():
        index.library.close()
    if displaced:
        print(f"robustness: FAILED: {displaced} right answers displaced by unverified results", file=sys.stderr)
    return clean_floor(outcomes, configs, kinds) or int(displaced > 0)


def clean_floor(outcomes, configs, kinds) -> int:
    """The smoke floor CI enforces: an undamaged copy of an indexed picture is found first by
    every configuration (exit status 1 otherwise)."""
    if "clean" not in kinds:
        return 0
    failing = [c for c in configs if not all(o.rank == 1 for o in outcomes[(c, "clean")])]
    for config in failing:
        print(f"robustness: FLOOR FAILED: {config!r} does not rank every clean query's original first",
              file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
