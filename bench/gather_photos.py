"""Gather a larger benchmark corpus of real photographs from Debian's wallpaper packages.

Downloads the packages' .deb files with `apt-get download` (no root needed for that, no
installation), unpacks them with `dpkg -x` into a temporary folder, keeps ONE file per
wallpaper (the largest of its resolution variants), drops copies of one picture that two
packages ship and plain one-colour pictures, keeps look-alikes (light and dark variants) together so that no split separates
twins, converts each to a JPEG of at most 1280 px, and splits them by a
seeded shuffle into four folders:

    OUT/corpus/tune     indexed; the only pictures anything learns or is tuned on (restorers,
                        region settings, policies)
    OUT/corpus/report   indexed; the only pictures whose damaged copies are reported
    OUT/heldout/tune    never indexed: negatives ("not in the collection") for tuning
    OUT/heldout/report  never indexed: negatives for the reported false-match rates

Nothing is committed to the repository.

    python bench/gather_photos.py --out /tmp/loupe-photos
    python bench/robustness.py --corpus /tmp/loupe-photos/corpus --heldout /tmp/loupe-photos/heldout/report \
        --query-part report
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGES = ("gnome-backgrounds", "mate-backgrounds", "ukui-wallpapers", "plasma-workspace-wallpapers",
            "lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "sway-backgrounds")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MAX_SIDE = 1280  # big enough for crops of 20%, small enough for thousands of queries
MIN_SIDE = 480
SAME, SIMILAR = 0.98, 0.90  # layout correlations of one picture twice, and of look-alikes
PLAIN_STD = 2.0  # grey levels: below this a picture is one plain colour


def wallpaper_key(path: Path, root: Path) -> str:
    """Files of one wallpaper share a key: Plasma keeps resolutions in <name>/contents/images/."""
    parts = path.relative_to(root).parts
    if "contents" in parts:
        return "/".join(parts[: parts.index("contents")])
    return str(path.relative_to(root).with_suffix(""))


def is_plain(path: Path) -> bool:
    """A picture of one colour (a transparent file comes out white): nothing to find it by."""
    with Image.open(path) as img:
        return float(np.asarray(img.convert("L").resize((64, 64))).std()) < PLAIN_STD


def thumbnail_vector(path: Path) -> np.ndarray:
    """A 32×32 grey thumbnail, zero-mean and unit-length: pictures' layouts compared by a dot product."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64).ravel()
    grey -= grey.mean()
    return grey / (np.linalg.norm(grey) + 1e-9)


def lookalike_groups(paths: list[Path]) -> list[list[Path]]:
    """`paths` without copies of one picture (layout correlation ≥ SAME: the same wallpaper
    shipped by two packages; the largest file stays), grouped so that look-alikes (≥ SIMILAR:
    a light and a dark variant, one scene at two times of day) share a group: a split keeps each
    group whole, so no picture has a twin on the other side."""
    vectors = np.stack([thumbnail_vector(p) for p in paths])
    corr = vectors @ vectors.T
    sizes = [p.stat().st_size for p in paths]
    kept = [i for i in range(len(paths)) if not any(corr[i, j] >= SAME and (sizes[j], -j) > (sizes[i], -i)
                                                     for j in range(len(paths)) if j != i)]
    parent = {i: i for i in kept}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in kept:
        for b in kept:
            if a < b and corr[a, b] >= SIMILAR:
                parent[root(a)] = root(b)
    groups: dict[int, list[Path]] = {}
    for i in kept:
        groups.setdefault(root(i), []).append(paths[i])
    return [sorted(g) for g in sorted(groups.values())]


def split_groups(groups: list[list[Path]], share: float) -> tuple[list[list[Path]], list[list[Path]]]:
    """The first groups, up to `share` of the pictures, and the rest."""
    total = sum(len(g) for g in groups)
    first, count = [], 0
    for i, group in enumerate(groups):
        if count + len(group) > round(total * share) and first:
            return first, groups[i:]
        first.append(group)
        count += len(group)
    return first, []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--packages", default=",".join(PACKAGES))
    parser.add_argument("--heldout-share", type=float, default=0.25, help="share never indexed (negatives)")
    parser.add_argument("--tune-share", type=float, default=0.5, help="share of each part used for tuning")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loupe-wallpapers-") as tmp:
        tmp_path = Path(tmp)
        names = [p.strip() for p in args.packages.split(",") if p.strip()]
        subprocess.run(["apt-get", "download", "-q", *names], cwd=tmp_path, check=True, stdout=subprocess.DEVNULL)
        root = tmp_path / "root"
        for deb in sorted(tmp_path.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        best: dict[str, tuple[int, Path]] = {}
        for path in root.rglob("*"):
            if path.suffix.lower() not in SUFFIXES or not path.is_file():
                continue
            try:
                with Image.open(path) as img:
                    w, h = img.size
            except Exception:  # an unreadable file is just not part of the corpus
                continue
            if min(w, h) < MIN_SIDE or is_plain(path):
                continue
            key = wallpaper_key(path, root)
            if key not in best or w * h > best[key][0]:
                best[key] = (w * h, path)
        chosen = sorted(path for _, path in best.values())
        groups = lookalike_groups(chosen)
        random.Random(args.seed).shuffle(groups)
        heldout, corpus = split_groups(groups, args.heldout_share)
        counts = []
        for folder, part_groups in (("heldout", heldout), ("corpus", corpus)):
            tune, report = split_groups(part_groups, 1.0 - args.tune_share)
            for sub, sub_groups in (("tune", tune), ("report", report)):
                out = args.out / folder / sub
                out.mkdir(parents=True, exist_ok=True)
                paths = [path for group in sub_groups for path in group]
                for i, path in enumerate(paths):
                    with Image.open(path) as img:
                        img = img.convert("RGB")
                        img.thumbnail((MAX_SIDE, MAX_SIDE))
                        img.save(out / f"{i:04d}-{path.stem[:40]}.jpg", quality=92)
                counts.append(f"{len(paths)} {folder}/{sub}")
        print(f"{', '.join(counts)} photographs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
