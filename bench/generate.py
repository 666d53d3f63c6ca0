#!/usr/bin/env python
"""Generate similar: how fast, how close to the source, how varied, and whether the model
replays its training pictures.

    python bench/generate.py --corpus /tmp/loupe-photos/corpus --minutes 25   # train, then measure
    python bench/generate.py --corpus DIR --model-dir DIR                    # reuse a trained model
    python bench/generate.py --quick                                         # CI: tiny model, seconds
    python bench/generate.py --corpus /tmp/loupe-photos/corpus --source-part report --minutes 25  # held out

It indexes the corpus in a fresh LOUPE_HOME (whole pictures), trains Loupe's own generator on
it with `loupe train-generator` (unless --model-dir gives one), then makes `--n` variations of
`--sources` indexed pictures at each strength, the way the API does (`OwnGenerator`,
SDEdit with DDIM), and reports per strength, for the trained model and, as the baseline, for an
untrained UNet of the same configuration (its seeded random initialisation, as training starts
from it) with the same sampler, strength, steps and seeds. SDEdit keeps part of its source
whatever the network does (it starts from the noised source), so the figures that say
"related to the source" (clip src, pix src, src in top5) only mean what the trained model
learnt where they beat the untrained row:

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
import contextlib
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_HOME, bench_workspace, clip_model_label, make_corpus, untrained_unet_folder  # noqa: E402
from provenance import print_header, print_result  # noqa: E402

COLUMNS = (("s/image", "seconds_per_image", 9, 2), ("clip src", "clip_source", 10, 4),
           ("pix src", "pixel_source", 9, 3), ("pix other", "pixel_other", 10, 3),
           ("diversity", "diversity", 11, 4), ("src in top5", "source_in_top5", 13, 2),
           ("copy", "copy_max", 7, 4), ("copy src", "copy_baseline", 10, 4),
           ("pix copy", "pixel_copy_max", 10, 3), ("pix copy src", "pixel_copy_baseline", 14, 3))


def thumb_vector(image: Image.Image) -> np.ndarray:
    grey = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float64).ravel()
    grey -= grey.mean()
    return grey / (np.linalg.norm(grey) + 1e-9)


@dataclass
class Corpus:
    """The indexed pictures and what the figures compare variations with."""

    library: object
    embedder: object
    records: list
    pictures: dict
    vectors: dict
    thumbs: dict

    @classmethod
    def load(cls, library, embedder) -> "Corpus":
        from indexer.images import load_image_file

        records = [library.image(i) for i in sorted(library.images.store.ids().tolist())]
        pictures = {r.id: load_image_file(Path(r.path)).image for r in records}
        return cls(library, embedder, records, pictures, {r.id: library.vector_of(r.id) for r in records},
                   {r.id: thumb_vector(p) for r, p in zip(records, pictures.values())})


def train_or_reuse(args, env: dict, model_dir: Path) -> None:
    """The generator in `model_dir`: a copy of --model-dir, or trained by `loupe train-generator`."""
    from searchapp.cli import main as loupe_main

    if args.model_dir:
        shutil.copytree(args.model_dir, model_dir)
        print(f"model:   reused {args.model_dir}")
        return
    train_args = ["train-generator", "--minutes", str(args.minutes), "--no-progress", "--json"]
    if args.size:
        train_args += ["--size", str(args.size)]
    if args.quick:
        train_args += ["--batch-size", "4"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert loupe_main(train_args, env) == 0
    trained = json.loads(out.getvalue())
    print(f"trained: {trained['steps']} steps in {trained['seconds']:.0f} s on {trained['pictures']} "
          f"pictures, loss {trained['first_loss']:.4f} -> {trained['last_loss']:.4f}")
    if args.keep_model:
        shutil.rmtree(args.keep_model, ignore_errors=True)
        shutil.copytree(model_dir, args.keep_model)


def variation_figures(generator, strength: float, corpus: Corpus, sources: list, args) -> tuple[dict, list]:
    """The figures (see the module docstring) of `generator`'s variations of `sources` at
    `strength`, and the figure's rows (a source, then its variations)."""
    from indexer.query import SearchQuery
    from searchapp.generation.backends import Variations

    f = {key: [] for _, key, _, _ in COLUMNS}
    rows = []
    for n_source, record in enumerate(sources):
        request = Variations(n=args.n, strength=strength, seed=args.seed + 100 * n_source, steps=args.steps)
        t0 = time.perf_counter()
        made = generator.generate(corpus.pictures[record.id], request, lambda d, t: None, lambda: False)
        f["seconds_per_image"].append((time.perf_counter() - t0) / len(made))
        embedded = corpus.embedder.encode_images(made)
        made_thumbs = [thumb_vector(m) for m in made]
        own = corpus.thumbs[record.id]
        others = [o.id for o in corpus.records if o.id != record.id]
        f["clip_source"] += list(embedded @ corpus.vectors[record.id])
        f["pixel_source"] += [float(t @ own) for t in made_thumbs]
        f["pixel_other"] += [float(corpus.thumbs[o] @ own) for o in others]
        f["pixel_copy_max"] += [max(float(t @ corpus.thumbs[o]) for o in others) for t in made_thumbs]
        f["pixel_copy_baseline"].append(max(float(own @ corpus.thumbs[o]) for o in others))
        pairs = embedded @ embedded.T
        f["diversity"].append(1 - pairs[np.triu_indices(len(made), 1)].mean())
        for vector in embedded:
            hits = corpus.library.search(vector, SearchQuery(k=6)).results
            f["source_in_top5"].append(record.id in [h.id for h in hits[:5]])
            f["copy_max"].append(max(h.score for h in hits if h.id != record.id))
        source_hits = corpus.library.search(corpus.vectors[record.id], SearchQuery(k=2)).results
        f["copy_baseline"].append(max(h.score for h in source_hits if h.id != record.id))
        rows.append([corpus.pictures[record.id]] + made)
    return {key: float(np.mean(values)) for key, values in f.items()}, rows


def print_row(strength: float, name: str, figures: dict) -> None:
    print(f"{strength:>8.2f} {name:<10}" + "".join(f"{figures[key]:>{width}.{digits}f}"
                                                   for _, key, width, digits in COLUMNS), flush=True)


def run(args, header: dict) -> int:
    from searchapp.cli import main as loupe_main
    from indexer.factory import load_embedder, open_library
    from indexer.settings import Settings
    from searchapp.diffusion.training import TrainOptions, read_info
    from searchapp.diffusion.unet import UNetConfig
    from searchapp.generation.backends import OWN_MODEL_FOLDER, load_own_generator

    work, env = bench_workspace("loupe-generate-", args.home, args.model, args.pretrained)
    env["LOUPE_REGIONS"] = "off"
    try:
        corpus_dir = args.corpus
        if corpus_dir is None:
            corpus_dir = work / "corpus"
            make_corpus(corpus_dir, 12 if args.quick else 48)
        settings = Settings.from_env(env)
        model_dir = settings.home / OWN_MODEL_FOLDER
        held_out = corpus_dir / args.source_part if args.source_part else None
        if held_out is not None and not held_out.is_dir():
            raise SystemExit(f"generate: {held_out} does not exist (--source-part names a subfolder of --corpus)")
        # With --source-part, the generator trains before those pictures are indexed: it never sees them.
        first = [d for d in sorted(corpus_dir.iterdir()) if d.is_dir() and d != held_out] if held_out else [corpus_dir]
        t0 = time.perf_counter()
        for folder in first:
            assert loupe_main(["index", str(folder), "--no-progress"], env) == 0
        print(f"indexed {', '.join(map(str, first))} in {time.perf_counter() - t0:.1f} s ({args.model}/{args.pretrained})")
        train_or_reuse(args, env, model_dir)
        if held_out is not None:
            assert loupe_main(["index", str(held_out), "--no-progress"], env) == 0
            print(f"indexed {held_out} after training: variations are made of these pictures only")
        trained = load_own_generator(model_dir, "cpu")
        init_seed = TrainOptions().seed
        config = UNetConfig.from_dict(read_info(model_dir)["config"])
        untrained = load_own_generator(untrained_unet_folder(work / "untrained", config, init_seed), "cpu")
        print(f"backend: {trained.describe()['note']}, {trained.trained_steps} training steps; baseline: the same "
              f"configuration untrained (seeded initialisation, seed {init_seed})")

        library = open_library(settings)
        corpus = Corpus.load(library, load_embedder(settings))
        rng = np.random.default_rng(args.seed)
        candidates = [r for r in corpus.records
                      if held_out is None or Path(r.path).resolve().is_relative_to(held_out.resolve())]
        chosen = sorted(rng.choice(len(candidates), min(args.sources, len(candidates)), replace=False))
        sources = [candidates[i] for i in chosen]
        grid_rows, results = [], {}
        print()
        print(f"{'strength':>8} {'generator':<10}" + "".join(f"{title:>{width}}" for title, _, width, _ in COLUMNS))
        for strength in args.strengths:
            results[str(strength)] = {}
            for name, generator in (("trained", trained), ("untrained", untrained)):
                figures, rows = variation_figures(generator, strength, corpus, sources, args)
                results[str(strength)][name] = figures
                print_row(strength, name, figures)
                if name == "trained" and strength == args.figure_strength:
                    grid_rows += rows[: args.figure_rows - len(grid_rows)]
        library.close()
        print("(untrained: the same UNet configuration, sampler, strength, steps and seeds with the weights training "
              "starts from; a trained figure means what it says where it differs from this row)")
        if args.figure and grid_rows:
            save_grid(grid_rows, args.figure, trained.resolution)
            print(f"\nfigure:  {args.figure} (rows: a source, then its variations at strength {args.figure_strength})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_result("generate", {"n": args.n, "steps": args.steps, "sources": len(sources),
                              "trained_steps": trained.trained_steps, "strengths": results}, header)
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
    p.add_argument("--source-part", help="make variations only of the pictures in this subfolder of --corpus "
                                          "(e.g. report), indexed after training, so the generator never saw them")
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
    header = print_header("generate", args, model=f"CLIP {clip_model_label(args.model, args.pretrained)}; generator: "
                          + (f"reused {args.model_dir}" if args.model_dir else f"trained here for {args.minutes} min"))
    return run(args, header)


if __name__ == "__main__":
    sys.exit(main())
