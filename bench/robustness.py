"""Robustness of reverse-image lookup to damaged queries.

Indexes a corpus of photographs into a temporary LOUPE_HOME, makes seeded corrupted queries
from every corpus image (noise, crops, re-compression, blur, downscale, rotation, overlaid
text, a strong combination), runs each through the real search path (encode the query bytes,
decode, embed, kNN, catalog join), and prints per kind recall@1, recall@10 and MRR of the
original, the false-match rate on held-out photographs that are not in the corpus, and p50
latency per stage, for each configuration asked (`--stages off,regional,blur`). Differences
between configurations come with paired bootstrap 95% intervals. It also reports how match
labels behave: how often the original is found *and* labelled a copy (exact or
near-duplicate) with the cut-off the index calibrated for itself, and how often a held-out
photograph is wrongly labelled a copy (the false-match rate of that cut-off).

    python bench/robustness.py --quick                        # scikit-image's photographs (CI)
    python bench/robustness.py --corpus DIR --heldout DIR     # see bench/README.md for a corpus

Configurations (`--stages`): `whole` (the whole-image index alone, no restoration), and each
query-restoration mode on the regional index: `off` (the query as given), `auto` (what the
service does by default), or one stage by name (`blur`, the trivial denoising baseline;
`pixel` and `pixel-ddim`, diffusion purification; `embedding`, the embedding-space diffusion
model; `qe`, αQE query expansion; `outpaint`, crop reconstruction). Stages with models use those
trained in `--restorers HOME` (`loupe train-restorer` there, on the same corpus) or configured
by LOUPE_RESTORE_MODEL / LOUPE_OUTPAINT_MODEL. The corpus is indexed once per index kind, and the
time and size of each index are printed; for `auto`, how often each condition was detected and
each stage ran, by kind.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from common import DEFAULT_HOME, bench_workspace
from searchapp.restoration.corruptions import KINDS, corrupt
from searchapp.restoration.stages import CONDITIONS, MODES

CONFIGS = ("whole",) + MODES
REGIONAL_CONFIGS = frozenset(MODES)


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
    rank: int | None  # 1-based rank of the original, None if not in the top k
    top_score: float
    copy_found: bool  # the service said a result is the query's picture
    copy_is_original: bool  # ...and the original is among the results labelled so
    ms: dict[str, float]
    detected: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()


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


def search(index: IndexedCorpus, data: bytes, config: str, k: int):
    """The service's image-search path (`searchapp.restoration.pipeline.restored_lookup`)."""
    from searchapp.restoration.pipeline import restored_lookup

    ms: dict[str, float] = {}
    page, report = restored_lookup(index.library, index.embedder, data, k, regions=config in REGIONAL_CONFIGS,
                                   mode="off" if config == "whole" else config, restorers=index.restorers, timings=ms)
    return page, report, ms


def build_index(work: Path, name: str, env: dict, corpus_dir: Path, regions: str,
                penalty: float | None, restorers_home: Path | None) -> IndexedCorpus:
    from indexer.commands import load_embedder, open_library
    from indexer.jobs import IndexJob, IndexOptions
    from indexer.settings import Settings
    from searchapp.restoration.pipeline import Restorers

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
    restorers = Restorers(settings.restore, home, "cpu")
    return IndexedCorpus(library, embedder, restorers, original_id, seconds, summary.embedded, vectors, size)


def bootstrap_diff(a: np.ndarray, b: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a with a paired bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    diff = b.astype(float) - a.astype(float)
    idx = rng.integers(0, len(diff), size=(rounds, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


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
    parser.add_argument("--seeds", type=int, default=2, help="corrupted queries per image and kind")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--home", default=DEFAULT_HOME)
    parser.add_argument("--quick", action="store_true", help="scikit-image's photographs, one seed")
    args = parser.parse_args()
    configs = [c.strip() for c in args.stages.split(",") if c.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    if args.quick:
        args.seeds = 1

    work, env = bench_workspace("loupe-robustness-", args.home, args.model, args.pretrained)
    if args.corpus is None or args.heldout is None:
        corpus_dir, heldout_dir = sample_folders(work)
    else:
        corpus_dir, heldout_dir = args.corpus, args.heldout
    indexes: dict[str, IndexedCorpus] = {}
    for kind_of_index in sorted({"regional" if c in REGIONAL_CONFIGS else "whole" for c in configs}, reverse=True):
        regions = (args.region_scales or "default") if kind_of_index == "regional" else "off"
        indexes[kind_of_index] = built = build_index(work, kind_of_index, env, corpus_dir, regions,
                                                     args.region_penalty, args.restorers)
        cutoff = built.library.match_cutoff()
        print(f"{kind_of_index} index (regions {regions}): {built.embedded} photos in {built.seconds:.1f} s "
              f"({built.embedded / built.seconds:.2f} photos/s), {built.vectors} vectors, "
              f"{built.index_bytes / 1e6:.2f} MB of FAISS files; near-duplicate cut-offs {cutoff.whole:.4f} "
              f"(whole), {cutoff.region:.4f} (region)")
    first = next(iter(indexes.values()))
    identity = first.library.stored_identity().as_dict()
    for stage in (c for c in configs if c not in ("whole", "off", "auto")):
        reason = first.restorers.missing(stage, identity)
        if reason is not None:
            print(f"robustness: cannot run {stage!r}: {reason} (see --restorers)", file=sys.stderr)
            return 2
    corpus = [path for path in photos_in(corpus_dir) if path in first.original_id]
    heldout = photos_in(heldout_dir)
    print(f"corpus {len(corpus)} photos, held-out {len(heldout)}, model {first.embedder.identity.describe()}, "
          f"{args.seeds} seed(s) per image and kind")

    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    false_copies: dict[str, list[bool]] = {c: [] for c in configs}
    false_tops: dict[str, list[float]] = {c: [] for c in configs}
    for config in configs:
        index = indexes["regional" if config in REGIONAL_CONFIGS else "whole"]
        for kind in kinds:
            rows = outcomes.setdefault((config, kind), [])
            for i, path in enumerate(corpus):
                original = Image.open(path).convert("RGB")
                for seed in range(args.seeds):
                    rng = np.random.default_rng([i, seed, KINDS.index(kind) if kind in KINDS else 0])
                    page, report, ms = search(index, query_bytes(corrupt(original, kind, rng)), config, 10)
                    ids = [r.id for r in page.results]
                    want = index.original_id[path]
                    rank = ids.index(want) + 1 if want in ids else None
                    labelled = any(r.id == want and r.match in ("exact", "near-duplicate") for r in page.results)
                    top = page.results[0].score if page.results else 0.0
                    detected = report.detection.conditions if report.detection else ()
                    rows.append(Outcome(rank, top, bool(page.copy_found), labelled, ms, detected, report.applied))
            for i, path in enumerate(heldout):
                image = Image.open(path).convert("RGB")
                rng = np.random.default_rng([10_000 + i, KINDS.index(kind) if kind in KINDS else 0])
                page, _, _ = search(index, query_bytes(corrupt(image, kind, rng)), config, 1)
                false_copies[config].append(bool(page.copy_found))
                false_tops[config].append(page.results[0].score if page.results else 0.0)

    print(f"\n{'config':<10}{'kind':<10}{'n':>5}{'R@1':>7}{'R@10':>7}{'MRR':>7}{'copy':>7}")
    for config in configs:
        for kind in kinds:
            rows = outcomes[(config, kind)]
            r1 = np.mean([o.rank == 1 for o in rows])
            r10 = np.mean([o.rank is not None for o in rows])
            mrr = np.mean([1.0 / o.rank if o.rank else 0.0 for o in rows])
            copy = np.mean([o.copy_is_original for o in rows])
            print(f"{config:<10}{kind:<10}{len(rows):>5}{r1:>7.3f}{r10:>7.3f}{mrr:>7.3f}{copy:>7.3f}")
    print("(copy: the original is among the results and labelled exact or near-duplicate)")

    print("\nheld-out photographs labelled a copy (false-match rate of the calibrated cut-off), by kind:")
    for config in configs:
        index = indexes["regional" if config in REGIONAL_CONFIGS else "whole"]
        flags = false_copies[config]
        per_kind = np.array(flags).reshape(len(kinds), -1).mean(axis=1) if flags else []
        worst = max(zip(per_kind, kinds))[1] if len(flags) else "-"
        cutoff = index.library.match_cutoff()
        print(f"  {config:<10} cut-offs {cutoff.whole:.4f}/{cutoff.region:.4f}  "
              f"false-match rate {np.mean(flags) if flags else float('nan'):.3f} ({len(flags)} queries; "
              f"clean {per_kind[kinds.index('clean')] if 'clean' in kinds else float('nan'):.3f}, worst kind {worst})")

    print("\nfalse matches on held-out photographs (top-1 score at or above the score that keeps 95% of "
          "correct top-1 matches):")
    for config in configs:
        correct = [o.top_score for kind in kinds for o in outcomes[(config, kind)] if o.rank == 1]
        threshold = float(np.percentile(correct, 5)) if correct else float("nan")
        tops = false_tops[config]
        rate = float(np.mean([s >= threshold for s in tops])) if tops else float("nan")
        print(f"  {config:<10} threshold {threshold:.4f}  false-match rate {rate:.3f} ({len(tops)} held-out queries)")

    print("\np50 latency per stage, over the queries that ran it (ms):")
    for config in configs:
        every = [o for kind in kinds for o in outcomes[(config, kind)]]
        names = list(dict.fromkeys(name for o in every for name in o.ms))
        parts = "  ".join(f"{name} {statistics.median(o.ms[name] for o in every if name in o.ms):.1f}"
                          for name in names)
        print(f"  {config:<10} {parts}")

    for config in (c for c in configs if c == "auto"):
        print("\nauto: share of queries with each condition detected / each stage run, by kind:")
        for kind in kinds:
            rows = outcomes[(config, kind)]
            found = {c: np.mean([c in o.detected for o in rows]) for c in CONDITIONS}
            ran = {s: np.mean([s in o.applied for o in rows]) for s in sorted({s for o in rows for s in o.applied})}
            print(f"  {kind:<10} detected " + " ".join(f"{c} {v:.2f}" for c, v in found.items())
                  + ("; ran " + " ".join(f"{s} {v:.2f}" for s, v in ran.items()) if ran else "; ran nothing"))

    if len(configs) > 1:
        base = configs[0]
        print(f"\nrecall@1 difference against {base!r} (paired bootstrap 95% interval):")
        for config in configs[1:]:
            for kind in kinds:
                a = np.array([o.rank == 1 for o in outcomes[(base, kind)]])
                b = np.array([o.rank == 1 for o in outcomes[(config, kind)]])
                mean, lo, hi = bootstrap_diff(a, b)
                print(f"  {config:<10}{kind:<10}{mean:+.3f}  [{lo:+.3f}, {hi:+.3f}]")
    for index in indexes.values():
        index.library.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
