"""Duplicates across a large library: precision and recall of the pairs `loupe duplicates`
groups, against planted groups of real photographs, and the seconds it takes.

    python bench/duplicates.py                      # 100,000 pictures (ViT-B-32, untrained)
    python bench/duplicates.py --size 10000 --quick # a smaller library
    python bench/duplicates.py --workspace /tmp/loupe-bench-dups-XXXX   # reuse its indexed photographs

The library: scikit-image's photographs, each with four altered copies (downscaled 60 % and
re-encoded, JPEG quality 40, a centre crop keeping 85 % of each side, brightened 15 %), indexed
by `loupe index` (embedding and local features, as Loupe does it), then synthetic CLIP-like
vectors (`bench/search_scale.clip_like_vectors`) added straight to the catalog up to `--size`
pictures, and the index synced (its type chosen for that size) and calibrated. Each photograph
and its copies is one planted group; the synthetic pictures have no files, no local features
and no planted copies. Grouping runs twice: with verification (the default) and without it
(the embedding's calibrated cut-off alone).

Figures: pairs within a planted group that share a found group (recall), of the found pairs
that involve a planted picture those within one planted group (precision), groups made of
synthetic pictures only (pairs the cut-off alone admits: they have no features to verify),
and the seconds of each stage.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

from PIL import Image, ImageEnhance

from common import DEFAULT_HOME, bench_workspace, clip_model_label
from provenance import print_header, print_result

PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
          "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
          "logo.png", "moon.png", "motorcycle_left.png", "phantom.png", "retina.jpg", "rocket.jpg")
COPIES = ("down60", "jpeg40", "crop85", "bright15")


def altered(img: Image.Image, kind: str) -> tuple[Image.Image, str, dict]:
    """(picture, suffix, save options) of one kind of copy."""
    w, h = img.size
    if kind == "down60":
        return img.resize((int(w * 0.6), int(h * 0.6)), Image.BICUBIC), ".jpg", {"quality": 85}
    if kind == "jpeg40":
        return img, ".jpg", {"quality": 40}
    if kind == "crop85":
        cw, ch = int(w * 0.85), int(h * 0.85)
        x, y = (w - cw) // 2, (h - ch) // 3
        return img.crop((x, y, x + cw, y + ch)), ".png", {}
    return ImageEnhance.Brightness(img).enhance(1.15), ".jpg", {"quality": 90}


def plant(folder: Path) -> dict[str, int]:
    """Write each photograph and its copies; returns file path → planted group."""
    from indexer.demo import sample_photos_dir

    source = sample_photos_dir()
    groups = {}
    for g, name in enumerate(n for n in PHOTOS if (source / n).is_file()):
        img = Image.open(source / name).convert("RGB")
        sub = folder / f"g{g:02d}"
        sub.mkdir(parents=True)
        path = sub / f"{Path(name).stem}.png"
        img.save(path)
        groups[str(path)] = g
        for kind in COPIES:
            copy, suffix, options = altered(img, kind)
            path = sub / f"{Path(name).stem}-{kind}{suffix}"
            copy.save(path, **options)
            groups[str(path)] = g
    return groups


def add_synthetic(library, count: int, seed: int) -> float:
    """`count` catalog rows with synthetic vectors (no files), in bulk; seconds taken."""
    from sqlalchemy import insert

    from indexer.catalog import ImageRecord, ImageStatus
    from search_scale import clip_like_vectors

    t0 = time.perf_counter()
    dim = library.stored_identity().embed_dim
    chunk = 10_000
    for start in range(0, count, chunk):
        m = min(chunk, count - start)
        vectors = clip_like_vectors(m, dim, seed + start)
        rows = [{"path": f"/synthetic/{start + i:07d}.jpg", "content_hash": f"synthetic-{start + i:07d}",
                 "size_bytes": 1, "mtime_ns": 0, "width": 640, "height": 480, "format": "JPEG",
                 "status": ImageStatus.INDEXED.value, "embedding": vectors[i].tobytes()} for i in range(m)]
        with library.sessions.begin() as session:
            session.execute(insert(ImageRecord), rows)
    return time.perf_counter() - t0


def drop_synthetic(library) -> None:
    from sqlalchemy import delete

    from indexer.catalog import ImageRecord

    with library.sessions.begin() as session:
        session.execute(delete(ImageRecord).where(ImageRecord.path.like("/synthetic/%")))


def pair_figures(groups, planted: dict[int, int]) -> dict:
    """Precision and recall of the found groups' pairs against the planted groups (by image id)."""
    truth = set()
    by_group: dict[int, list[int]] = {}
    for image_id, g in planted.items():
        by_group.setdefault(g, []).append(image_id)
    for members in by_group.values():
        truth |= {tuple(sorted(p)) for p in itertools.combinations(members, 2)}
    found, synthetic_groups = set(), 0
    for group in groups:
        ids = [m.id for m in group.members]
        if not any(i in planted for i in ids):
            synthetic_groups += 1
            continue
        found |= {tuple(sorted(p)) for p in itertools.combinations(ids, 2)}
    hit = len(found & truth)
    return {"true_pairs": len(truth), "found_pairs": len(found), "correct_pairs": hit,
            "precision": round(hit / len(found), 4) if found else None,
            "recall": round(hit / len(truth), 4) if truth else None,
            "synthetic_only_groups": synthetic_groups,
            "planted_groups_found_whole": sum(1 for members in by_group.values() if any(
                set(members) <= {m.id for m in g.members} for g in groups))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="pictures in the library (default 100,000)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--home", default=DEFAULT_HOME, help="where the untrained weights are cached")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="skip the run without verification")
    parser.add_argument("--workspace", default=None,
                        help="reuse an earlier run's folder (printed as workspace:): its photographs are not "
                             "indexed again, its synthetic pictures are replaced")
    args = parser.parse_args(argv)
    header = print_header("duplicates", args, clip_model_label(args.model, args.pretrained))

    from indexer.duplicates import DuplicateOptions, find_groups
    from indexer.factory import load_embedder, open_library
    from indexer.jobs import IndexJob, IndexOptions
    from indexer.settings import Settings

    if args.workspace:  # an earlier run's: its indexed photographs kept, its synthetic rows replaced
        work = Path(args.workspace)
        env = {**os.environ, "LOUPE_HOME": str(work / "home"), "LOUPE_MODEL": args.model,
               "LOUPE_PRETRAINED": args.pretrained, "LOUPE_DEVICE": "cpu"}
        planted_paths = {str(p): int(p.parent.name[1:]) for p in sorted((work / "photos").rglob("*.*"))}
        settings = Settings.from_env(env)
        library = open_library(settings)
        drop_synthetic(library)
        index_s = 0.0
    else:
        work, env = bench_workspace("loupe-bench-dups-", args.home, args.model, args.pretrained)
        planted_paths = plant(work / "photos")
        settings = Settings.from_env(env)
        library = open_library(settings)
        t0 = time.perf_counter()
        IndexJob(library, load_embedder(settings), IndexOptions(progress=False, calibrate=False)).run([work / "photos"])
        index_s = time.perf_counter() - t0
    print(f"workspace: {work}", flush=True)
    planted = {}
    for path, g in planted_paths.items():
        record = library.image_by_path(path)
        planted[record.id] = g
    synthetic = max(0, args.size - len(planted))
    insert_s = add_synthetic(library, synthetic, args.seed)
    t0 = time.perf_counter()
    with library.writer():
        store = library.sync_store()
    sync_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    library.calibrate()
    calibrate_s = time.perf_counter() - t0
    calibration = library.calibration()
    print(f"library: {len(planted)} planted pictures in {len(set(planted.values()))} groups (indexed in "
          f"{index_s:.1f} s), {synthetic} synthetic ({insert_s:.1f} s to insert); index {store.spec.factory} "
          f"nprobe {store.spec.nprobe} ({sync_s:.1f} s); calibrated in {calibrate_s:.1f} s: near-duplicate "
          f"cut-off {calibration.match.whole:.4f}, inliers {calibration.inliers.inliers}", flush=True)
    figures = {"size": len(store), "planted": len(planted), "planted_groups": len(set(planted.values())),
               "index": store.spec.factory, "cutoff": round(calibration.match.whole, 4),
               "inlier_cutoff": calibration.inliers.inliers}
    for verify in ((True,) if args.quick else (True, False)):
        t0, cpu0 = time.perf_counter(), time.process_time()
        report = find_groups(library, DuplicateOptions(verify=verify))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        found = pair_figures(report.groups, planted)
        name = "verify" if verify else "no_verify"
        figures[name] = {**found, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "groups": len(report.groups),
                         "stats": report.stats.as_dict()}
        print(f"{name}: precision {found['precision']}, recall {found['recall']} ({found['correct_pairs']} of "
              f"{found['true_pairs']} planted pairs; {found['found_pairs']} found pairs touch planted pictures); "
              f"{found['synthetic_only_groups']} groups of synthetic pictures only; {seconds:.1f} s ({cpu:.1f} s CPU) "
              f"({report.stats.seconds}); candidates {report.stats.candidate_pairs} from score "
              f"{report.stats.candidate_score}", flush=True)
    print_result("duplicates", figures, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
