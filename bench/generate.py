#!/usr/bin/env python
"""Generate similar: how fast, how close to the source, how varied, and whether the model
replays its training pictures.

    python bench/generate.py --corpus /tmp/loupe-photos/corpus --minutes 25   # train, then measure
    python bench/generate.py --corpus DIR --model-dir DIR                    # reuse a trained model
    python bench/generate.py --quick                                         # CI: tiny model, seconds

It indexes the corpus in a fresh LOUPE_HOME (whole pictures), trains Loupe's own generator on
it with `loupe train-generator` (unless --model-dir gives one), then makes `--n` variations of
`--sources` indexed pictures at each strength, the way the API does (`OwnGenerator`,
SDEdit with DDIM), and reports per strength:

  s/image      seconds per generated picture on this machine
  clip src     CLIP cosine between a variation and its source
  pix src      correlation of 16x16 grey thumbnails, variation vs source; `pix other` is the
               same for the source against other indexed pictures (what unrelated looks like)
  diversity    1 - mean pairwise CLIP cosine among one source's variations
  src in top5  how often the source is among the 5 indexed pictures nearest to a variation
  copy         the largest CLIP cosine of a variation to any indexed picture other than its
               source, against the same figure for the source itself (`copy src`); `pix copy`
               and `pix copy src` are the same in 16x16 grey thumbnails (a model replaying
               another training picture would push the variation's figure towards 1)

With untrained CLIP weights (`--pretrained none`, the default here: no weights can be
downloaded), CLIP cosines are not semantic: the pixel figures and the figure (`--figure`, a
grid of sources and their variations) are what show relatedness then.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_HOME, bench_workspace, make_corpus  # noqa: E402


def thumb_vector(image: Image.Image) -> np.ndarray:
    grey = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float64).ravel()
    grey -= grey.mean()
    return grey / (np.linalg.norm(grey) + 1e-9)


def run(args) -> int:
    from indexer.cli import main as indexer_main
    from indexer.commands import load_embedder, open_library
    from indexer.images import load_image_file
    from indexer.settings import Settings
    from searchapp.cli import main as loupe_main
    from searchapp.generation.backends import OWN_MODEL_FOLDER, OwnGenerator, Variations

    work, env = bench_workspace("loupe-generate-", args.home, args.model, args.pretrained)
    env["LOUPE_REGIONS"] = "off"
    try:
        corpus = args.corpus
        if corpus is None:
            corpus = work / "corpus"
            make_corpus(corpus, 12 if args.quick else 48)
        t0 = time.perf_counter()
        assert indexer_main(["index", str(corpus), "--no-progress"], env) == 0
        settings = Settings.from_env(env)
        print(f"indexed {corpus} in {time.perf_counter() - t0:.1f} s ({args.model}/{args.pretrained})")
        model_dir = settings.home / OWN_MODEL_FOLDER
        if args.model_dir:
            shutil.copytree(args.model_dir, model_dir)
            print(f"model:   reused {args.model_dir}")
        else:
            train_args = ["train-generator", "--minutes", str(args.minutes), "--no-progress", "--json"]
            if args.size:
                train_args += ["--size", str(args.size)]
            if args.quick:
                train_args += ["--batch-size", "4"]
            import contextlib
            import io

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert loupe_main(train_args, env) == 0
            trained = json.loads(out.getvalue())
            print(f"trained: {trained['steps']} steps in {trained['seconds']:.0f} s on {trained['pictures']} "
                  f"pictures, loss {trained['first_loss']:.4f} -> {trained['last_loss']:.4f}")
            if args.keep_model:
                shutil.rmtree(args.keep_model, ignore_errors=True)
                shutil.copytree(model_dir, args.keep_model)
        generator = OwnGenerator(model_dir, "cpu")
        print(f"backend: {generator.describe()['note']}, {generator.info['steps']} training steps")

        library = open_library(settings)
        embedder = load_embedder(settings)
        records = [library.image(i) for i in sorted(library.images.store.ids().tolist())]
        rng = np.random.default_rng(args.seed)
        sources = [records[i] for i in sorted(rng.choice(len(records), min(args.sources, len(records)),
                                                          replace=False))]
        pictures = {r.id: load_image_file(Path(r.path)).image for r in records}
        vectors = {r.id: library.vector_of(r.id) for r in records}
        thumbs = {r.id: thumb_vector(p) for r, p in zip(records, pictures.values())}
        grid_rows = []
        print()
        print(f"{'strength':>8}{'s/image':>9}{'clip src':>10}{'pix src':>9}{'pix other':>10}{'diversity':>11}"
              f"{'src in top5':>13}{'copy':>7}{'copy src':>10}{'pix copy':>10}{'pix copy src':>14}")
        for strength in args.strengths:
            seconds, clip_src, pix_src, pix_other, diversity, in_top, copy, copy_base = ([] for _ in range(8))
            pix_copy, pix_copy_base = [], []
            for n_source, record in enumerate(sources):
                request = Variations(n=args.n, strength=strength, seed=args.seed + 100 * n_source, steps=args.steps)
                t0 = time.perf_counter()
                made = generator.generate(pictures[record.id], request, lambda d, t: None, lambda: False)
                seconds.append((time.perf_counter() - t0) / len(made))
                embedded = embedder.encode_images(made)
                clip_src += list(embedded @ vectors[record.id])
                pix_src += [float(thumb_vector(m) @ thumbs[record.id]) for m in made]
                others = [o.id for o in records if o.id != record.id]
                pix_other += [float(thumbs[o] @ thumbs[record.id]) for o in others]
                pix_copy += [max(float(thumb_vector(m) @ thumbs[o]) for o in others) for m in made]
                pix_copy_base.append(max(float(thumbs[record.id] @ thumbs[o]) for o in others))
                pairs = embedded @ embedded.T
                diversity.append(1 - pairs[np.triu_indices(len(made), 1)].mean())
                for vector in embedded:
                    hits = library.search(vector, 6).results
                    in_top.append(record.id in [h.id for h in hits[:5]])
                    copy.append(max(h.score for h in hits if h.id != record.id))
                source_hits = library.search(vectors[record.id], 2).results
                copy_base.append(max(h.score for h in source_hits if h.id != record.id))
                if strength == args.figure_strength and len(grid_rows) < args.figure_rows:
                    grid_rows.append([pictures[record.id]] + made)
            print(f"{strength:>8.2f}{np.mean(seconds):>9.2f}{np.mean(clip_src):>10.4f}{np.mean(pix_src):>9.3f}"
                  f"{np.mean(pix_other):>10.3f}{np.mean(diversity):>11.4f}{np.mean(in_top):>13.2f}"
                  f"{np.mean(copy):>7.4f}{np.mean(copy_base):>10.4f}{np.mean(pix_copy):>10.3f}"
                  f"{np.mean(pix_copy_base):>14.3f}")
            print(f"bench=generate strength={strength} n={args.n} steps={args.steps} sources={len(sources)} "
                  f"seconds_per_image={np.mean(seconds):.3f} clip_source={np.mean(clip_src):.4f} "
                  f"pixel_source={np.mean(pix_src):.4f} pixel_other={np.mean(pix_other):.4f} "
                  f"diversity={np.mean(diversity):.4f} source_in_top5={np.mean(in_top):.3f} "
                  f"copy_max={np.mean(copy):.4f} copy_baseline={np.mean(copy_base):.4f} "
                  f"pixel_copy_max={np.mean(pix_copy):.4f} pixel_copy_baseline={np.mean(pix_copy_base):.4f}", flush=True)
        library.close()
        if args.figure and grid_rows:
            save_grid(grid_rows, args.figure, generator.config.sample_size)
            print(f"\nfigure:  {args.figure} (rows: a source, then its variations at strength {args.figure_strength})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def save_grid(rows: list[list[Image.Image]], path: Path, size: int, cell: int = 96) -> None:
    """Sources (squash-resized to the model's size, as the model sees them) and variations."""
    grid = Image.new("RGB", (cell * len(rows[0]) + 8, cell * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            shown = image.convert("RGB").resize((size, size), Image.BICUBIC).resize((cell, cell), Image.NEAREST)
            grid.paste(shown, (c * cell + (8 if c else 0), r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, help="folder of photographs (default: 48 cut from scikit-image's)")
    p.add_argument("--minutes", type=float, default=25.0, help="training budget (default 25)")
    p.add_argument("--size", type=int, default=None, help="model picture size (default: train-generator's)")
    p.add_argument("--model-dir", type=Path, help="a trained generator folder to reuse instead of training")
    p.add_argument("--keep-model", type=Path, help="copy the trained generator here")
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strengths", type=lambda s: [float(x) for x in s.split(",")], default=[0.4, 0.6, 0.8])
    p.add_argument("--figure", type=Path, help="save a grid of sources and variations (PNG)")
    p.add_argument("--figure-strength", type=float, default=0.6)
    p.add_argument("--figure-rows", type=int, default=6)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--home", default=DEFAULT_HOME)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CI: 12 pictures, a few seconds of training, 2 sources")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.size, args.sources, args.n, args.steps = 0.1, 16, 2, 2, 10
        args.strengths = [0.6]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
