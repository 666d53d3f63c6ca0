"""Gather a larger benchmark corpus of real photographs from Debian's wallpaper packages.

Downloads the packages' .deb files with `apt-get download` (no root needed for that, no
installation), unpacks them with `dpkg -x` into a temporary folder, keeps ONE file per
wallpaper (the largest of its resolution variants, so near-duplicates never straddle the
corpus and held-out split), converts each to a JPEG of at most 1280 px, and splits them by a
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

from PIL import Image

PACKAGES = ("gnome-backgrounds", "mate-backgrounds", "ukui-wallpapers", "plasma-workspace-wallpapers",
            "lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "sway-backgrounds")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MAX_SIDE = 1280  # big enough for crops of 20%, small enough for thousands of queries
MIN_SIDE = 480


def wallpaper_key(path: Path, root: Path) -> str:
    """Files of one wallpaper share a key: Plasma keeps resolutions in <name>/contents/images/."""
    parts = path.relative_to(root).parts
    if "contents" in parts:
        return "/".join(parts[: parts.index("contents")])
    return str(path.relative_to(root).with_suffix(""))


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
            if min(w, h) < MIN_SIDE:
                continue
            key = wallpaper_key(path, root)
            if key not in best or w * h > best[key][0]:
                best[key] = (w * h, path)
        chosen = sorted(path for _, path in best.values())
        random.Random(args.seed).shuffle(chosen)
        split = int(round(len(chosen) * args.heldout_share))
        counts = []
        for folder, part in (("heldout", chosen[:split]), ("corpus", chosen[split:])):
            tune = int(round(len(part) * args.tune_share))
            for sub, paths in (("tune", part[:tune]), ("report", part[tune:])):
                out = args.out / folder / sub
                out.mkdir(parents=True, exist_ok=True)
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
